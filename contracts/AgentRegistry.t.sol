// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC721} from "@openzeppelin/contracts/token/ERC721/IERC721.sol";
import {IERC721Receiver} from "@openzeppelin/contracts/token/ERC721/IERC721Receiver.sol";
import {IERC20Errors, IERC721Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {Vm} from "./test/Vm.sol";
import {SoulmeshFixture} from "./test/SoulmeshFixture.sol";
import {AgentRegistry} from "./AgentRegistry.sol";
import {PersonaRegistry} from "./PersonaRegistry.sol";
import {IAgentRegistry} from "./interfaces/IAgentRegistry.sol";

/// @dev A contract adopter: accepts the agent, refuses it, or re-enters the registry from the ERC-721 callback.
contract AgentRegistryTestAdopter is IERC721Receiver {
    enum Mode {
        Accept,
        Refuse,
        ReenterMint,
        ReenterMintWithPermit
    }

    AgentRegistry internal immutable _agents;
    Mode public mode;
    uint256 public received;

    constructor(AgentRegistry agents_) {
        _agents = agents_;
    }

    function setMode(Mode mode_) external {
        mode = mode_;
    }

    function adopt(uint256 personaId, uint256 maxPrice) external returns (uint256) {
        return _agents.mint(personaId, maxPrice);
    }

    function onERC721Received(address, address, uint256, bytes calldata) external returns (bytes4) {
        if (mode == Mode.Refuse) return bytes4(0xdeadbeef);
        uint256 personaId = _agents.personaOf(_agents.totalAgents());
        if (mode == Mode.ReenterMint) _agents.mint(personaId, 0);
        if (mode == Mode.ReenterMintWithPermit) _agents.mintWithPermit(personaId, 0, 0, 0, 0, 0);
        ++received;
        return IERC721Receiver.onERC721Received.selector;
    }
}

contract AgentRegistryTest is SoulmeshFixture {
    uint256 internal constant ROYALTY = 200_000;
    uint256 internal constant PRICE = 5 * USD;
    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");

    address internal device = makeAddr("device");
    address internal approved = makeAddr("approved");
    address internal operator = makeAddr("operator");

    uint256 internal personaId;
    uint256 internal freePersonaId;

    function setUp() public override {
        super.setUp();
        personaId = _createPersona(creator, ROYALTY, PRICE);
        freePersonaId = _createPersona(creator, ROYALTY, 0);
    }

    // ------------------------------------------------------------- helpers

    function _signPermit(uint256 key, address owner_, uint256 value, uint256 deadline)
        internal
        view
        returns (uint8 v, bytes32 r, bytes32 s)
    {
        bytes32 structHash =
            keccak256(abi.encode(PERMIT_TYPEHASH, owner_, address(agents), value, token.nonces(owner_), deadline));
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", token.DOMAIN_SEPARATOR(), structHash));
        return vm.sign(key, digest);
    }

    function _assertNoAgentMinted() internal view {
        assertEq(agents.totalAgents(), 0, "totalAgents");
        assertEq(agents.balanceOf(user), 0, "agents held by user");
    }

    function _assertHead(uint256 agentId, string memory cid, uint64 seq) internal view {
        (string memory c, uint64 s) = agents.memoryHeadOf(agentId);
        assertEq(c, cid, "head cid");
        assertEq(s, seq, "head seq");
        AgentRegistry.Agent memory a = agents.agentOf(agentId);
        assertEq(a.headCid, cid, "agentOf cid");
        assertEq(a.headSeq, seq, "agentOf seq");
    }

    function _setHead(address as_, uint256 agentId, string memory cid, uint64 seq) internal {
        vm.prank(as_);
        agents.setMemoryHead(agentId, cid, seq);
    }

    // ------------------------------------------------------------- constructor and views

    function test_Constructor_SetsRegistriesAndMetadata() public view {
        assertEq(address(agents.personaRegistry()), address(personas));
        assertEq(address(agents.paymentToken()), address(token));
        assertEq(agents.name(), "Soulmesh Agent");
        assertEq(agents.symbol(), "SOULA");
        assertEq(agents.totalAgents(), 0);
        assertTrue(agents.supportsInterface(type(IERC721).interfaceId));
    }

    function test_Views_RevertWhen_AgentUnknown() public {
        _mintAgent(user, freePersonaId);
        uint256[2] memory ids = [uint256(0), 2];
        for (uint256 i; i < ids.length; ++i) {
            bytes memory err = abi.encodeWithSelector(AgentRegistry.Agent__UnknownAgent.selector, ids[i]);
            vm.expectRevert(err);
            agents.memoryHeadOf(ids[i]);
            vm.expectRevert(err);
            agents.agentOf(ids[i]);
            vm.expectRevert(err);
            agents.personaOf(ids[i]);
            vm.expectRevert(err);
            IAgentRegistry(address(agents)).personaOf(ids[i]);
        }
    }

    // ------------------------------------------------------------- mint

    function test_Mint_PaysAdoptionPriceToHolderAndMintsToCaller() public {
        _fundAndApprove(user, address(agents), PRICE + 1);

        vm.prank(user);
        uint256 agentId = agents.mint(personaId, PRICE);

        assertEq(agentId, 1);
        assertEq(agents.ownerOf(agentId), user);
        assertEq(agents.balanceOf(user), 1);
        assertEq(agents.totalAgents(), 1);
        assertEq(agents.personaOf(agentId), personaId);
        AgentRegistry.Agent memory a = agents.agentOf(agentId);
        assertEq(a.personaId, personaId);
        _assertHead(agentId, "", 0);
        assertEq(token.balanceOf(user), 1);
        assertEq(token.balanceOf(creator), PRICE);
        assertEq(token.balanceOf(address(agents)), 0, "the registry keeps nothing");
        assertEq(token.allowance(user, address(agents)), 1);
    }

    function test_Mint_EmitsAgentMintedAndTransfers() public {
        _fundAndApprove(user, address(agents), PRICE);

        vm.expectEmit(true, true, true, true, address(agents));
        emit AgentRegistry.AgentMinted(1, personaId, user, creator, PRICE);
        vm.expectEmit(true, true, true, true, address(agents));
        emit IERC721.Transfer(address(0), user, 1);
        vm.expectEmit(true, true, true, true, address(token));
        emit IERC20.Transfer(user, creator, PRICE);
        vm.prank(user);
        agents.mint(personaId, PRICE);
    }

    function test_Mint_PaysCurrentHolderAfterPersonaTransfer() public {
        vm.prank(creator);
        personas.transferFrom(creator, stranger, personaId);
        _fundAndApprove(user, address(agents), PRICE);

        vm.expectEmit(true, true, true, true, address(agents));
        emit AgentRegistry.AgentMinted(1, personaId, user, stranger, PRICE);
        vm.prank(user);
        agents.mint(personaId, PRICE);

        assertEq(token.balanceOf(stranger), PRICE, "the new holder is paid");
        assertEq(token.balanceOf(creator), 0, "the creator no longer is");
        assertEq(token.balanceOf(user), 0);
    }

    function test_Mint_WithZeroPriceMovesNoTokens() public {
        // No balance and no allowance: any transferFrom, even of zero, would show up as a token log.
        vm.recordLogs();
        vm.prank(user);
        uint256 agentId = agents.mint(freePersonaId, 0);

        Vm.Log[] memory logs = vm.getRecordedLogs();
        for (uint256 i; i < logs.length; ++i) {
            assertTrue(logs[i].emitter != address(token), "token touched by a free adoption");
        }
        assertEq(logs.length, 2, "AgentMinted and Transfer only");
        assertEq(agents.ownerOf(agentId), user);
        assertEq(agents.personaOf(agentId), freePersonaId);
        assertEq(token.balanceOf(creator), 0);
    }

    function test_Mint_ChargesOnlyThePriceBelowTheMaximum() public {
        _fundAndApprove(user, address(agents), 3 * PRICE);
        vm.prank(user);
        agents.mint(personaId, 3 * PRICE);
        assertEq(token.balanceOf(creator), PRICE);
        assertEq(token.balanceOf(user), 2 * PRICE);
        assertEq(token.allowance(user, address(agents)), 2 * PRICE);
    }

    function test_Mint_GivesEachAdoptionItsOwnAgent() public {
        uint256 a = _mintAgent(user, personaId);
        uint256 b = _mintAgent(stranger, freePersonaId);
        uint256 c = _mintAgent(user, personaId);
        assertEq(a, 1);
        assertEq(b, 2);
        assertEq(c, 3);
        assertEq(agents.totalAgents(), 3);
        assertEq(agents.personaOf(b), freePersonaId);
        assertEq(agents.ownerOf(b), stranger);
        assertEq(agents.balanceOf(user), 2);
        assertEq(token.balanceOf(creator), 2 * PRICE);
    }

    function test_Mint_ToContractThatAcceptsERC721() public {
        AgentRegistryTestAdopter wallet = new AgentRegistryTestAdopter(agents);
        uint256 agentId = wallet.adopt(freePersonaId, 0);
        assertEq(agents.ownerOf(agentId), address(wallet));
        assertEq(wallet.received(), 1);
    }

    function test_Mint_RevertsWhen_PriceAboveMax() public {
        _fundAndApprove(user, address(agents), PRICE);
        // The holder raises the price in front of the adoption.
        vm.prank(creator);
        personas.setAdoptionPrice(personaId, PRICE + 1);

        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__AdoptionPriceAboveMax.selector, PRICE + 1, PRICE));
        vm.prank(user);
        agents.mint(personaId, PRICE);

        _assertNoAgentMinted();
        assertEq(token.balanceOf(user), PRICE);
        assertEq(token.balanceOf(creator), 0);
    }

    /// forge-config: fuzz.runs = 128
    function testFuzz_Mint_ChargesPriceOnlyWithinMax(uint256 price, uint256 maxPrice) public {
        price = bound(price, 0, 1e15 * USD);
        maxPrice = bound(maxPrice, 0, 2e15 * USD);
        vm.prank(creator);
        personas.setAdoptionPrice(personaId, price);
        uint256 funds = price > maxPrice ? price : maxPrice;
        _fundAndApprove(user, address(agents), funds);

        if (price > maxPrice) {
            vm.expectRevert(
                abi.encodeWithSelector(AgentRegistry.Agent__AdoptionPriceAboveMax.selector, price, maxPrice)
            );
            vm.prank(user);
            agents.mint(personaId, maxPrice);
            _assertNoAgentMinted();
            assertEq(token.balanceOf(user), funds);
        } else {
            vm.prank(user);
            uint256 agentId = agents.mint(personaId, maxPrice);
            assertEq(agents.ownerOf(agentId), user);
            assertEq(token.balanceOf(creator), price);
            assertEq(token.balanceOf(user), funds - price);
        }
    }

    function test_Mint_RevertsWhen_PersonaUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__UnknownPersona.selector, 99));
        vm.prank(user);
        agents.mint(99, type(uint256).max);
        _assertNoAgentMinted();
    }

    function test_Mint_RevertsWhen_AllowanceTooLow() public {
        _fundAndApprove(user, address(agents), PRICE - 1);
        token.mint(user, 1);

        vm.expectRevert(
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector, address(agents), PRICE - 1, PRICE
            )
        );
        vm.prank(user);
        agents.mint(personaId, PRICE);

        // The agent is minted before the payment: the failed payment must take it back.
        _assertNoAgentMinted();
        vm.expectRevert(abi.encodeWithSelector(IERC721Errors.ERC721NonexistentToken.selector, 1));
        agents.ownerOf(1);
        assertEq(token.balanceOf(user), PRICE);
    }

    function test_Mint_RevertsWhen_BalanceTooLow() public {
        _fundAndApprove(user, address(agents), PRICE - 1);
        vm.prank(user);
        token.approve(address(agents), PRICE);

        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, user, PRICE - 1, PRICE)
        );
        vm.prank(user);
        agents.mint(personaId, PRICE);
        _assertNoAgentMinted();
    }

    function test_Mint_RevertsWhen_ReceiverRefusesERC721() public {
        AgentRegistryTestAdopter wallet = new AgentRegistryTestAdopter(agents);
        wallet.setMode(AgentRegistryTestAdopter.Mode.Refuse);

        vm.expectRevert(abi.encodeWithSelector(IERC721Errors.ERC721InvalidReceiver.selector, address(wallet)));
        wallet.adopt(freePersonaId, 0);
        assertEq(agents.totalAgents(), 0);
    }

    function test_Mint_RevertsWhen_ReenteredFromReceiverCallback() public {
        // The callback runs before the payment; a second mint from it must be refused.
        AgentRegistryTestAdopter wallet = new AgentRegistryTestAdopter(agents);
        wallet.setMode(AgentRegistryTestAdopter.Mode.ReenterMint);

        vm.expectRevert(abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector));
        wallet.adopt(freePersonaId, 0);
        assertEq(agents.totalAgents(), 0);
    }

    function test_Mint_RevertsWhen_ReenteredThroughMintWithPermit() public {
        AgentRegistryTestAdopter wallet = new AgentRegistryTestAdopter(agents);
        wallet.setMode(AgentRegistryTestAdopter.Mode.ReenterMintWithPermit);

        vm.expectRevert(abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector));
        wallet.adopt(freePersonaId, 0);
        assertEq(agents.totalAgents(), 0);
    }

    // ------------------------------------------------------------- mintWithPermit

    function test_MintWithPermit_UsesTheSignedPermit() public {
        token.mint(user, PRICE);
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(userKey, user, PRICE, deadline);

        vm.expectEmit(true, true, true, true, address(token));
        emit IERC20.Approval(user, address(agents), PRICE);
        vm.expectEmit(true, true, true, true, address(agents));
        emit AgentRegistry.AgentMinted(1, personaId, user, creator, PRICE);
        vm.prank(user);
        uint256 agentId = agents.mintWithPermit(personaId, PRICE, deadline, v, r, s);

        assertEq(agents.ownerOf(agentId), user);
        assertEq(agents.personaOf(agentId), personaId);
        assertEq(token.balanceOf(creator), PRICE);
        assertEq(token.balanceOf(user), 0);
        assertEq(token.allowance(user, address(agents)), 0);
        assertEq(token.nonces(user), 1, "the permit was used");
    }

    function test_MintWithPermit_LeavesUnspentAllowanceBelowMax() public {
        // The permit is for the maximum; only the price is spent.
        token.mint(user, 2 * PRICE);
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(userKey, user, 2 * PRICE, deadline);

        vm.prank(user);
        agents.mintWithPermit(personaId, 2 * PRICE, deadline, v, r, s);
        assertEq(token.balanceOf(creator), PRICE);
        assertEq(token.allowance(user, address(agents)), PRICE);
    }

    function test_MintWithPermit_SucceedsWhen_PermitFrontRun() public {
        token.mint(user, PRICE);
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(userKey, user, PRICE, deadline);

        // Anyone may submit a permit seen in the mempool: it then fails inside mintWithPermit.
        vm.prank(stranger);
        token.permit(user, address(agents), PRICE, deadline, v, r, s);
        assertEq(token.nonces(user), 1);

        vm.prank(user);
        uint256 agentId = agents.mintWithPermit(personaId, PRICE, deadline, v, r, s);

        assertEq(agents.ownerOf(agentId), user);
        assertEq(token.balanceOf(creator), PRICE);
        assertEq(token.allowance(user, address(agents)), 0);
        assertEq(token.nonces(user), 1, "the front-run permit is not used twice");
    }

    function test_MintWithPermit_SucceedsWhen_PermitInvalidButAllowanceExists() public {
        _fundAndApprove(user, address(agents), PRICE);
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(uint256(keccak256("not the user")), user, PRICE, deadline);

        vm.prank(user);
        uint256 agentId = agents.mintWithPermit(personaId, PRICE, deadline, v, r, s);
        assertEq(agents.ownerOf(agentId), user);
        assertEq(token.balanceOf(creator), PRICE);
        assertEq(token.nonces(user), 0);
    }

    function test_MintWithPermit_SucceedsWhen_PermitExpiredButAllowanceExists() public {
        _fundAndApprove(user, address(agents), PRICE);
        uint256 deadline = vm.getBlockTimestamp() - 1;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(userKey, user, PRICE, deadline);

        vm.prank(user);
        agents.mintWithPermit(personaId, PRICE, deadline, v, r, s);
        assertEq(token.balanceOf(creator), PRICE);
        assertEq(token.nonces(user), 0, "an expired permit is not used");
    }

    function test_MintWithPermit_RevertsWhen_PermitInvalidAndNoAllowance() public {
        token.mint(user, PRICE);
        uint256 deadline = vm.getBlockTimestamp() - 1;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(userKey, user, PRICE, deadline);

        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(agents), 0, PRICE)
        );
        vm.prank(user);
        agents.mintWithPermit(personaId, PRICE, deadline, v, r, s);
        _assertNoAgentMinted();
        assertEq(token.balanceOf(user), PRICE);
    }

    function test_MintWithPermit_RevertsWhen_PriceAboveMax() public {
        token.mint(user, PRICE);
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(userKey, user, PRICE - 1, deadline);

        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__AdoptionPriceAboveMax.selector, PRICE, PRICE - 1));
        vm.prank(user);
        agents.mintWithPermit(personaId, PRICE - 1, deadline, v, r, s);

        // The permit ran before the price check: the revert must undo it, so the signature stays usable.
        _assertNoAgentMinted();
        assertEq(token.nonces(user), 0);
        assertEq(token.allowance(user, address(agents)), 0);
    }

    function test_MintWithPermit_RevertsWhen_SomeoneElseSubmitsTheUsersPermit() public {
        // The permit's owner is always msg.sender: a stolen signature cannot spend the signer's tokens.
        token.mint(user, PRICE);
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signPermit(userKey, user, PRICE, deadline);

        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(agents), 0, PRICE)
        );
        vm.prank(stranger);
        agents.mintWithPermit(personaId, PRICE, deadline, v, r, s);

        assertEq(agents.totalAgents(), 0);
        assertEq(token.balanceOf(user), PRICE);
        assertEq(token.nonces(user), 0);
        assertEq(token.allowance(user, address(agents)), 0);
    }

    function test_MintWithPermit_FreePersonaNeedsNoPermit() public {
        vm.prank(user);
        uint256 agentId = agents.mintWithPermit(freePersonaId, 0, 0, 0, bytes32(0), bytes32(0));
        assertEq(agents.ownerOf(agentId), user);
    }

    // ------------------------------------------------------------- setMemoryHead

    function test_SetMemoryHead_ByOwner() public {
        uint256 agentId = _mintAgent(user, personaId);
        _setHead(user, agentId, "bafy-head-1", 1);
        _assertHead(agentId, "bafy-head-1", 1);
        assertEq(agents.agentOf(agentId).personaId, personaId, "persona untouched");

        // Sequence numbers need only increase, not be consecutive.
        _setHead(user, agentId, "bafy-head-2", 10);
        _assertHead(agentId, "bafy-head-2", 10);
    }

    function test_SetMemoryHead_EmitsMemoryHeadUpdated() public {
        uint256 agentId = _mintAgent(user, personaId);
        vm.prank(user);
        agents.setHeadOperator(device, true);

        vm.expectEmit(true, true, true, true, address(agents));
        emit AgentRegistry.MemoryHeadUpdated(agentId, "bafy-head-1", 1, user);
        _setHead(user, agentId, "bafy-head-1", 1);

        // `by` names who published, not the owner.
        vm.expectEmit(true, true, true, true, address(agents));
        emit AgentRegistry.MemoryHeadUpdated(agentId, "bafy-head-2", 2, device);
        _setHead(device, agentId, "bafy-head-2", 2);
    }

    function test_SetMemoryHead_ByERC721ApprovedAddress() public {
        uint256 agentId = _mintAgent(user, personaId);
        vm.prank(user);
        agents.approve(approved, agentId);
        _setHead(approved, agentId, "bafy-approved", 1);
        _assertHead(agentId, "bafy-approved", 1);
    }

    function test_SetMemoryHead_ByApprovedForAllOperator() public {
        uint256 agentId = _mintAgent(user, personaId);
        vm.prank(user);
        agents.setApprovalForAll(operator, true);
        _setHead(operator, agentId, "bafy-operator", 1);
        _assertHead(agentId, "bafy-operator", 1);
    }

    function test_SetMemoryHead_ByHeadOperator() public {
        uint256 agentId = _mintAgent(user, personaId);
        vm.prank(user);
        agents.setHeadOperator(device, true);
        assertTrue(agents.isHeadOperator(user, device));

        _setHead(device, agentId, "bafy-device", 1);
        _assertHead(agentId, "bafy-device", 1);
    }

    function test_SetMemoryHead_HeadOperatorCannotMoveTheAgent() public {
        uint256 agentId = _mintAgent(user, personaId);
        vm.prank(user);
        agents.setHeadOperator(device, true);

        vm.expectRevert(abi.encodeWithSelector(IERC721Errors.ERC721InsufficientApproval.selector, device, agentId));
        vm.prank(device);
        agents.transferFrom(user, device, agentId);
        assertEq(agents.ownerOf(agentId), user);
    }

    function test_SetMemoryHead_HeadOperatorCoversEveryAgentOfTheOwner() public {
        vm.prank(user);
        agents.setHeadOperator(device, true);
        // Approved before this agent existed: the approval is per owner, not per agent.
        uint256 a = _mintAgent(user, personaId);
        uint256 b = _mintAgent(user, freePersonaId);
        _setHead(device, a, "bafy-a", 1);
        _setHead(device, b, "bafy-b", 1);
        _assertHead(a, "bafy-a", 1);
        _assertHead(b, "bafy-b", 1);
    }

    function test_SetMemoryHead_RevertsWhen_HeadOperatorRevoked() public {
        uint256 agentId = _mintAgent(user, personaId);
        vm.prank(user);
        agents.setHeadOperator(device, true);
        _setHead(device, agentId, "bafy-1", 1);

        vm.prank(user);
        agents.setHeadOperator(device, false);
        assertFalse(agents.isHeadOperator(user, device));

        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__NotAuthorized.selector, agentId, device));
        _setHead(device, agentId, "bafy-2", 2);
        _assertHead(agentId, "bafy-1", 1);
    }

    function test_SetMemoryHead_RevertsWhen_HeadOperatorOfAnotherOwner() public {
        uint256 agentId = _mintAgent(user, personaId);
        vm.prank(stranger);
        agents.setHeadOperator(device, true);

        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__NotAuthorized.selector, agentId, device));
        _setHead(device, agentId, "bafy-1", 1);
        _assertHead(agentId, "", 0);
    }

    function test_SetMemoryHead_RevertsWhen_CallerNotAuthorized() public {
        uint256 agentId = _mintAgent(user, personaId);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__NotAuthorized.selector, agentId, stranger));
        _setHead(stranger, agentId, "bafy-evil", 1);
        _assertHead(agentId, "", 0);

        // The persona's holder has no say over agents adopted from it.
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__NotAuthorized.selector, agentId, creator));
        _setHead(creator, agentId, "bafy-evil", 1);
    }

    function test_SetMemoryHead_RevertsWhen_SequenceStale() public {
        uint256 agentId = _mintAgent(user, personaId);
        _setHead(user, agentId, "bafy-5", 5);

        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__StaleHeadSequence.selector, agentId, 5, 4));
        _setHead(user, agentId, "bafy-4", 4);
        _assertHead(agentId, "bafy-5", 5);
    }

    function test_SetMemoryHead_RevertsWhen_SequenceEqual() public {
        uint256 agentId = _mintAgent(user, personaId);
        _setHead(user, agentId, "bafy-5", 5);

        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__StaleHeadSequence.selector, agentId, 5, 5));
        _setHead(user, agentId, "bafy-5-fork", 5);
        _assertHead(agentId, "bafy-5", 5);
    }

    function test_SetMemoryHead_RevertsWhen_FirstSequenceZero() public {
        uint256 agentId = _mintAgent(user, personaId);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__StaleHeadSequence.selector, agentId, 0, 0));
        _setHead(user, agentId, "bafy-0", 0);
        _assertHead(agentId, "", 0);
    }

    function test_SetMemoryHead_RevertsWhen_CidEmpty() public {
        uint256 agentId = _mintAgent(user, personaId);
        _setHead(user, agentId, "bafy-1", 1);

        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__EmptyHead.selector));
        _setHead(user, agentId, "", 2);
        _assertHead(agentId, "bafy-1", 1);
    }

    function test_SetMemoryHead_RevertsWhen_AgentUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__UnknownAgent.selector, 1));
        _setHead(user, 1, "bafy-1", 1);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__UnknownAgent.selector, 0));
        _setHead(user, 0, "bafy-1", 1);
    }

    function testFuzz_SetMemoryHead_SequenceMustIncrease(uint64 first, uint64 second) public {
        first = uint64(bound(first, 1, type(uint64).max));
        uint256 agentId = _mintAgent(user, freePersonaId);
        _setHead(user, agentId, "bafy-first", first);

        if (second > first) {
            _setHead(user, agentId, "bafy-second", second);
            _assertHead(agentId, "bafy-second", second);
        } else {
            vm.expectRevert(
                abi.encodeWithSelector(AgentRegistry.Agent__StaleHeadSequence.selector, agentId, first, second)
            );
            _setHead(user, agentId, "bafy-second", second);
            _assertHead(agentId, "bafy-first", first);
        }
    }

    // ------------------------------------------------------------- transfers and head rights

    function test_Transfer_HeadOperatorsAndApprovalsStayWithThePreviousOwner() public {
        uint256 agentId = _mintAgent(user, personaId);
        vm.startPrank(user);
        agents.setHeadOperator(device, true);
        agents.approve(approved, agentId);
        agents.setApprovalForAll(operator, true);
        agents.setMemoryHead(agentId, "bafy-user", 3);
        agents.transferFrom(user, stranger, agentId);
        vm.stopPrank();

        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__NotAuthorized.selector, agentId, device));
        _setHead(device, agentId, "bafy-device", 4);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__NotAuthorized.selector, agentId, approved));
        _setHead(approved, agentId, "bafy-approved", 4);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__NotAuthorized.selector, agentId, operator));
        _setHead(operator, agentId, "bafy-operator", 4);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__NotAuthorized.selector, agentId, user));
        _setHead(user, agentId, "bafy-user-2", 4);

        // The head travels with the agent; the new owner continues its sequence.
        _assertHead(agentId, "bafy-user", 3);
        assertEq(agents.personaOf(agentId), personaId);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__StaleHeadSequence.selector, agentId, 3, 3));
        _setHead(stranger, agentId, "bafy-stranger", 3);
        _setHead(stranger, agentId, "bafy-stranger", 4);
        _assertHead(agentId, "bafy-stranger", 4);
        // The old owner's approval of its device is untouched, for its other agents.
        assertTrue(agents.isHeadOperator(user, device));
        assertFalse(agents.isHeadOperator(stranger, device));
    }

    function test_Transfer_NewOwnersHeadOperatorTakesOver() public {
        uint256 agentId = _mintAgent(user, personaId);
        address strangerDevice = makeAddr("stranger-device");
        vm.prank(stranger);
        agents.setHeadOperator(strangerDevice, true);

        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__NotAuthorized.selector, agentId, strangerDevice));
        _setHead(strangerDevice, agentId, "bafy-1", 1);

        vm.prank(user);
        agents.transferFrom(user, stranger, agentId);
        _setHead(strangerDevice, agentId, "bafy-1", 1);
        _assertHead(agentId, "bafy-1", 1);
    }

    // ------------------------------------------------------------- setHeadOperator

    function test_SetHeadOperator_EmitsHeadOperatorSet() public {
        vm.expectEmit(true, true, true, true, address(agents));
        emit AgentRegistry.HeadOperatorSet(user, device, true);
        vm.prank(user);
        agents.setHeadOperator(device, true);

        vm.expectEmit(true, true, true, true, address(agents));
        emit AgentRegistry.HeadOperatorSet(user, device, false);
        vm.prank(user);
        agents.setHeadOperator(device, false);
    }

    function test_SetHeadOperator_IsPerOwner() public {
        vm.prank(user);
        agents.setHeadOperator(device, true);
        assertTrue(agents.isHeadOperator(user, device));
        assertFalse(agents.isHeadOperator(stranger, device));
        assertFalse(agents.isHeadOperator(device, user), "not symmetric");
    }

    function test_SetHeadOperator_RevertsWhen_OperatorZero() public {
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__ZeroOperator.selector));
        vm.prank(user);
        agents.setHeadOperator(address(0), true);
        assertFalse(agents.isHeadOperator(user, address(0)));
    }
}
