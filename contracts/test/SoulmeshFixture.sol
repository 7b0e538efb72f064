// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {SoulmeshTest} from "./SoulmeshTest.sol";
import {TestStablecoin} from "../token/TestStablecoin.sol";
import {PersonaRegistry} from "../PersonaRegistry.sol";
import {AgentRegistry} from "../AgentRegistry.sol";
import {ProviderRegistry} from "../ProviderRegistry.sol";
import {InferenceEscrow} from "../InferenceEscrow.sol";

/// @notice Deploys the whole protocol as the devnet does, with named actors, for the Solidity tests.
abstract contract SoulmeshFixture is SoulmeshTest {
    uint256 internal constant USD = 1e6;
    uint256 internal constant MAX_VOUCHER_LIFETIME = 1 days;
    uint256 internal constant WITHDRAWAL_DELAY = 2 days;
    uint256 internal constant ROYALTY_DELAY = 2 days;
    uint256 internal constant UNBONDING_DELAY = 7 days;
    uint256 internal constant MIN_STAKE = 100 * USD;
    uint256 internal constant MAX_ROYALTY_PER_MILLION = 1_000 * USD;
    bytes32 internal constant BASE_MODEL = keccak256("tiny-llama.gguf");
    bytes32 internal constant ADAPTER = keccak256("persona-adapter.gguf");

    TestStablecoin internal token;
    PersonaRegistry internal personas;
    AgentRegistry internal agents;
    ProviderRegistry internal providers;
    InferenceEscrow internal escrow;

    address internal owner = makeAddr("owner");
    address internal treasury = makeAddr("treasury");
    address internal creator = makeAddr("creator");
    address internal provider = makeAddr("provider");
    address internal stranger = makeAddr("stranger");
    address internal user;
    uint256 internal userKey;

    function setUp() public virtual {
        (user, userKey) = makeAddrAndKey("user");
        token = new TestStablecoin(address(this));
        personas = new PersonaRegistry(ROYALTY_DELAY, MAX_ROYALTY_PER_MILLION);
        agents = new AgentRegistry(personas, token);
        providers = new ProviderRegistry(token, MIN_STAKE, UNBONDING_DELAY);
        escrow = new InferenceEscrow(
            token, agents, personas, providers, MAX_VOUCHER_LIFETIME, WITHDRAWAL_DELAY, treasury, owner
        );
        vm.warp(1_800_000_000);
    }

    /// @dev Mints `amount` to `to` and approves `spender` for it, as `to`.
    function _fundAndApprove(address to, address spender, uint256 amount) internal {
        token.mint(to, amount);
        vm.prank(to);
        token.approve(spender, amount);
    }

    function _createPersona(address as_, uint256 royaltyPerMillion, uint256 adoptionPrice) internal returns (uint256) {
        vm.prank(as_);
        return personas.createPersona("bafy-manifest", ADAPTER, BASE_MODEL, royaltyPerMillion, adoptionPrice);
    }

    function _mintAgent(address as_, uint256 personaId) internal returns (uint256) {
        (, uint256 price) = personas.adoptionTermsOf(personaId);
        if (price > 0) _fundAndApprove(as_, address(agents), price);
        vm.prank(as_);
        return agents.mint(personaId, price);
    }

    function _deposit(address as_, uint256 amount) internal {
        _fundAndApprove(as_, address(escrow), amount);
        vm.prank(as_);
        escrow.deposit(amount);
    }

    /// @dev Deposits `amount` for `as_` and commits it to its lane with `to` (a registered provider).
    function _depositAndCommit(address as_, address to, uint256 amount) internal {
        _fundAndApprove(as_, address(escrow), amount);
        vm.prank(as_);
        escrow.depositAndCommit(to, amount);
    }

    function _register(address as_) internal {
        _fundAndApprove(as_, address(providers), MIN_STAKE);
        string[] memory addrs = new string[](1);
        addrs[0] = "/ip4/127.0.0.1/tcp/4001";
        bytes32[] memory models = new bytes32[](1);
        models[0] = BASE_MODEL;
        vm.prank(as_);
        providers.register("12D3KooWPeer", addrs, models, 500_000, 1_500_000, MIN_STAKE);
    }
}
