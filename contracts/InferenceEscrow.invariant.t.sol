// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {Vm} from "./test/Vm.sol";
import {SoulmeshFixture} from "./test/SoulmeshFixture.sol";
import {InferenceEscrow} from "./InferenceEscrow.sol";
import {PersonaRegistry} from "./PersonaRegistry.sol";
import {TestStablecoin} from "./token/TestStablecoin.sol";

/// @notice Drives the escrow through random sequences of what its users, providers, creators and owner do,
/// keeping ghost totals of what went in, what came out and what each channel settled.
contract EscrowHandler {
    Vm private constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    InferenceEscrow public immutable escrow;
    TestStablecoin public immutable token;
    PersonaRegistry public immutable personas;
    address public immutable owner;

    address[] public users;
    uint256[] private keys;
    uint256[] public agentOf;
    address[] public providers;
    address[] public creators;

    uint256 public ghostIn;
    uint256 public ghostOut;
    uint256 public settlements;
    /// @dev What the handler settled last on each channel: user index, provider index.
    mapping(uint256 => mapping(uint256 => InferenceEscrow.Voucher)) public lastSettled;

    constructor(
        InferenceEscrow escrow_,
        TestStablecoin token_,
        PersonaRegistry personas_,
        address owner_,
        address[] memory users_,
        uint256[] memory keys_,
        uint256[] memory agents_,
        address[] memory providers_,
        address[] memory creators_
    ) {
        (escrow, token, personas, owner) = (escrow_, token_, personas_, owner_);
        (users, keys, agentOf, providers, creators) = (users_, keys_, agents_, providers_, creators_);
    }

    function userCount() external view returns (uint256) {
        return users.length;
    }

    function providerCount() external view returns (uint256) {
        return providers.length;
    }

    function creatorCount() external view returns (uint256) {
        return creators.length;
    }

    function deposit(uint256 who, uint256 amount) external {
        address user = users[who % users.length];
        amount = 1 + (amount % 1_000e6);
        token.mint(user, amount);
        vm.startPrank(user);
        token.approve(address(escrow), amount);
        escrow.deposit(amount);
        vm.stopPrank();
        ghostIn += amount;
    }

    function requestWithdrawal(uint256 who, uint256 amount) external {
        address user = users[who % users.length];
        uint256 available = escrow.depositOf(user);
        if (available == 0) return;
        vm.prank(user);
        escrow.requestWithdrawal(1 + (amount % available));
    }

    function completeWithdrawal(uint256 who) external {
        address user = users[who % users.length];
        uint256 before = token.balanceOf(user);
        vm.prank(user);
        escrow.completeWithdrawal();
        ghostOut += token.balanceOf(user) - before;
    }

    function settle(uint256 who, uint256 whom, bool newSession, uint256 moreIn, uint256 moreOut) external {
        (InferenceEscrow.Voucher memory v, uint256 u, uint256 p) = _next(who, whom, newSession, moreIn, moreOut);
        bytes memory sig = _sign(u, v);
        vm.prank(providers[p]);
        escrow.settle(v, sig);
        lastSettled[u][p] = v;
        settlements++;
    }

    function settleBatch(uint256 seed, uint256 size) external {
        // At most one voucher per channel in a batch: each builds on its channel's settled state.
        size = 1 + (size % users.length);
        InferenceEscrow.SignedVoucher[] memory batch = new InferenceEscrow.SignedVoucher[](size);
        uint256[] memory us = new uint256[](size);
        uint256[] memory ps = new uint256[](size);
        for (uint256 i; i < size; ++i) {
            uint256 u = (seed + i) % users.length;
            (InferenceEscrow.Voucher memory v,, uint256 p) =
                _next(u, seed >> 8, (seed >> i) & 1 == 1, seed >> 16, seed >> 32);
            batch[i] = InferenceEscrow.SignedVoucher(v, _sign(u, v));
            (us[i], ps[i]) = (u, p);
        }
        vm.prank(providers[ps[0]]);
        escrow.settleBatch(batch);
        for (uint256 i; i < size; ++i) {
            lastSettled[us[i]][ps[i]] = batch[i].voucher;
        }
        settlements += size;
    }

    function withdrawEarnings(uint256 who) external {
        address[] memory everyone = _earners();
        address account = everyone[who % everyone.length];
        uint256 before = token.balanceOf(account);
        vm.prank(account);
        escrow.withdrawEarnings(account);
        ghostOut += token.balanceOf(account) - before;
    }

    function scheduleRoyalty(uint256 who, uint256 royalty) external {
        address creator = creators[who % creators.length];
        vm.prank(creator);
        personas.scheduleRoyalty((who % creators.length) + 1, royalty % 2_000_000);
    }

    function scheduleFee(uint256 bps) external {
        vm.prank(owner);
        escrow.scheduleProtocolFee(bps % 1_001);
    }

    function warp(uint256 seconds_) external {
        vm.warp(block.timestamp + (seconds_ % 3 days));
    }

    function earners() external view returns (address[] memory) {
        return _earners();
    }

    function _earners() private view returns (address[] memory everyone) {
        everyone = new address[](providers.length + creators.length + 1);
        for (uint256 i; i < providers.length; ++i) everyone[i] = providers[i];
        for (uint256 i; i < creators.length; ++i) everyone[providers.length + i] = creators[i];
        everyone[everyone.length - 1] = escrow.treasury();
    }

    function _next(uint256 who, uint256 whom, bool newSession, uint256 moreIn, uint256 moreOut)
        private
        view
        returns (InferenceEscrow.Voucher memory v, uint256 u, uint256 p)
    {
        u = who % users.length;
        p = whom % providers.length;
        (uint64 session, uint64 settledIn, uint64 settledOut) = escrow.settledOf(users[u], providers[p], agentOf[u]);
        if (newSession || session == 0) (session, settledIn, settledOut) = (session + 1, 0, 0);
        v = InferenceEscrow.Voucher({
            payer: users[u],
            provider: providers[p],
            agentId: agentOf[u],
            session: session,
            inputTokens: settledIn + uint64(1 + (moreIn % 200_000)),
            outputTokens: settledOut + uint64(moreOut % 50_000),
            priceInputPerMillion: uint128(100_000 + (moreIn % 3_000_000)),
            priceOutputPerMillion: uint128(100_000 + (moreOut % 9_000_000)),
            expiry: uint64(block.timestamp + 1 hours)
        });
    }

    function _sign(uint256 u, InferenceEscrow.Voucher memory v) private view returns (bytes memory) {
        (uint8 sv, bytes32 r, bytes32 s) = vm.sign(keys[u], escrow.hashVoucher(v));
        return abi.encodePacked(r, s, sv);
    }
}

/// @notice The escrow never owes more or less than it holds, whatever its users do.
contract InferenceEscrowInvariantTest is SoulmeshFixture {
    EscrowHandler internal handler;

    function setUp() public override {
        super.setUp();
        address[] memory creators = new address[](2);
        creators[0] = creator;
        creators[1] = makeAddr("creator-2");
        _createPersona(creators[0], 200_000, 0);
        _createPersona(creators[1], 1_000_000, 0);

        address[] memory users = new address[](3);
        uint256[] memory keys = new uint256[](3);
        uint256[] memory agentIds = new uint256[](3);
        for (uint256 i; i < 3; ++i) {
            (users[i], keys[i]) = makeAddrAndKey(string.concat("payer-", vm.toString(i)));
            agentIds[i] = _mintAgent(users[i], (i % 2) + 1);
        }
        address[] memory provs = new address[](2);
        provs[0] = provider;
        provs[1] = makeAddr("provider-2");

        handler = new EscrowHandler(escrow, token, personas, owner, users, keys, agentIds, provs, creators);
        // The handler mints test tokens for deposits.
        token.transferOwnership(address(handler));
        targetContract(address(handler));
    }

    function _owed() internal view returns (uint256 owed) {
        for (uint256 i; i < handler.userCount(); ++i) owed += escrow.depositOf(handler.users(i));
        address[] memory earners = handler.earners();
        for (uint256 i; i < earners.length; ++i) owed += escrow.earningsOf(earners[i]);
    }

    function invariant_BalanceEqualsDepositsPlusEarnings() public view {
        assertEq(token.balanceOf(address(escrow)), _owed(), "balance == deposits + earnings");
    }

    function invariant_TokensInMinusOutEqualBalance() public view {
        assertEq(handler.ghostIn() - handler.ghostOut(), token.balanceOf(address(escrow)), "conservation");
    }

    function invariant_ChannelsHoldWhatWasLastSettled() public view {
        for (uint256 u; u < handler.userCount(); ++u) {
            for (uint256 p; p < handler.providerCount(); ++p) {
                (address payer, address prov, uint256 agentId, uint64 session, uint64 inTok, uint64 outTok,,,) =
                    handler.lastSettled(u, p);
                if (payer == address(0)) continue;
                (uint64 s, uint64 i, uint64 o) = escrow.settledOf(payer, prov, agentId);
                assertEq(uint256(s), uint256(session), "session");
                assertEq(uint256(i), uint256(inTok), "input tokens");
                assertEq(uint256(o), uint256(outTok), "output tokens");
            }
        }
    }

    /// @dev The invariants mean something only if the handler's actions succeed: this drives each once.
    function test_HandlerActionsSucceed() public {
        handler.deposit(0, 500e6);
        handler.deposit(1, 500e6);
        handler.deposit(2, 500e6);
        handler.settle(0, 0, true, 10_000, 5_000);
        handler.settle(0, 0, false, 10_000, 5_000);
        handler.settleBatch(0x0102030405, 2);
        handler.requestWithdrawal(0, 1e6);
        handler.warp(3 days - 1);
        handler.completeWithdrawal(0);
        handler.withdrawEarnings(0);
        handler.scheduleRoyalty(1, 5);
        handler.scheduleFee(100);
        assertEq(handler.settlements(), 5);
        assertGt(handler.ghostOut(), 0);
        invariant_BalanceEqualsDepositsPlusEarnings();
        invariant_TokensInMinusOutEqualBalance();
        invariant_ChannelsHoldWhatWasLastSettled();
    }
}
