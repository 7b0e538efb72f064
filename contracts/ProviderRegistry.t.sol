// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {SoulmeshTest} from "./test/SoulmeshTest.sol";
import {SoulmeshFixture} from "./test/SoulmeshFixture.sol";
import {TestStablecoin} from "./token/TestStablecoin.sol";
import {ProviderRegistry} from "./ProviderRegistry.sol";

contract ProviderRegistryTest is SoulmeshFixture {
    // Same record as the fixture's `_register`, so that both kinds of registration compare alike.
    string internal constant PEER_ID = "12D3KooWPeer";
    string internal constant MULTIADDR = "/ip4/127.0.0.1/tcp/4001";
    uint128 internal constant PRICE_IN = 500_000;
    uint128 internal constant PRICE_OUT = 1_500_000;
    bytes32 internal constant OTHER_MODEL = keccak256("mistral-7b.gguf");

    address internal recipient = makeAddr("recipient");

    // ------------------------------------------------------------- helpers

    function _addrs() internal pure returns (string[] memory a) {
        a = new string[](1);
        a[0] = MULTIADDR;
    }

    function _models() internal pure returns (bytes32[] memory m) {
        m = new bytes32[](1);
        m[0] = BASE_MODEL;
    }

    function _repeat(bytes1 c, uint256 n) internal pure returns (string memory) {
        bytes memory b = new bytes(n);
        for (uint256 i; i < n; ++i) {
            b[i] = c;
        }
        return string(b);
    }

    function _registerWithStake(address as_, uint256 stake) internal {
        _fundAndApprove(as_, address(providers), stake);
        vm.prank(as_);
        providers.register(PEER_ID, _addrs(), _models(), PRICE_IN, PRICE_OUT, stake);
    }

    function _expected(uint256 stake, uint256 registeredAt) internal pure returns (ProviderRegistry.Provider memory p) {
        p.peerId = PEER_ID;
        p.multiaddrs = _addrs();
        p.modelHashes = _models();
        p.priceInputPerMillion = PRICE_IN;
        p.priceOutputPerMillion = PRICE_OUT;
        p.stake = stake;
        p.registeredAt = uint64(registeredAt);
    }

    function _assertProvider(address who, ProviderRegistry.Provider memory want) internal view {
        ProviderRegistry.Provider memory got = providers.providerOf(who);
        assertEq(got.peerId, want.peerId, "peerId");
        assertEq(got.multiaddrs.length, want.multiaddrs.length, "multiaddrs length");
        for (uint256 i; i < want.multiaddrs.length; ++i) {
            assertEq(got.multiaddrs[i], want.multiaddrs[i], "multiaddr");
        }
        assertEq(abi.encode(got.modelHashes), abi.encode(want.modelHashes), "modelHashes");
        assertEq(got.priceInputPerMillion, want.priceInputPerMillion, "priceInputPerMillion");
        assertEq(got.priceOutputPerMillion, want.priceOutputPerMillion, "priceOutputPerMillion");
        assertEq(got.stake, want.stake, "stake");
        assertEq(got.unbonding, want.unbonding, "unbonding");
        assertEq(got.unbondingAvailableAt, want.unbondingAvailableAt, "unbondingAvailableAt");
        assertEq(got.registeredAt, want.registeredAt, "registeredAt");
    }

    /// @dev The registry's one accounting promise: every token it holds is someone's stake or unbonding stake.
    function _assertHeldMatchesBalance() internal view {
        assertEq(providers.totalHeld(), token.balanceOf(address(providers)), "totalHeld != registry balance");
    }

    // ------------------------------------------------------------- constructor and views

    function test_Constructor_SetsParameters() public view {
        assertEq(address(providers.stakeToken()), address(token));
        assertEq(providers.minStake(), MIN_STAKE);
        assertEq(providers.unbondingDelay(), UNBONDING_DELAY);
        assertEq(providers.providerCount(), 0);
        assertEq(providers.totalHeld(), 0);
        assertEq(providers.providers(0, 10).length, 0);
        assertEq(providers.MAX_MULTIADDRS(), 16);
        assertEq(providers.MAX_MODELS(), 32);
        assertEq(providers.MAX_ADDRESS_LENGTH(), 256);
    }

    function test_Constructor_RevertsWhen_DelayAboveMax() public {
        uint256 maxDelay = providers.MAX_DELAY();
        new ProviderRegistry(token, MIN_STAKE, maxDelay);
        vm.expectRevert(
            abi.encodeWithSelector(ProviderRegistry.Provider__DelayTooLong.selector, maxDelay + 1, maxDelay)
        );
        new ProviderRegistry(token, MIN_STAKE, maxDelay + 1);
    }

    function test_ProviderOf_RevertsWhen_NotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__NotRegistered.selector, stranger));
        providers.providerOf(stranger);
    }

    function test_IsActive_FalseWhen_NotRegistered() public view {
        assertFalse(providers.isActive(stranger));
        assertFalse(providers.isActive(address(0)));
    }

    // ------------------------------------------------------------- register

    function test_Register_StoresRecordAndPullsStake() public {
        uint256 stake = MIN_STAKE + 50 * USD;
        string[] memory addrs = new string[](2);
        addrs[0] = MULTIADDR;
        addrs[1] = "/dns4/node.example/tcp/443/wss";
        bytes32[] memory models = new bytes32[](2);
        models[0] = BASE_MODEL;
        models[1] = OTHER_MODEL;
        _fundAndApprove(provider, address(providers), stake + 1);
        uint256 t = vm.getBlockTimestamp();

        vm.prank(provider);
        providers.register(PEER_ID, addrs, models, 7, 9, stake);

        ProviderRegistry.Provider memory want = _expected(stake, t);
        want.multiaddrs = addrs;
        want.modelHashes = models;
        want.priceInputPerMillion = 7;
        want.priceOutputPerMillion = 9;
        _assertProvider(provider, want);
        assertEq(token.balanceOf(provider), 1, "only the stake is pulled");
        assertEq(token.balanceOf(address(providers)), stake);
        assertEq(token.allowance(provider, address(providers)), 1);
        assertEq(providers.totalHeld(), stake);
        assertEq(providers.providerCount(), 1);
        address[] memory page = providers.providers(0, 10);
        assertEq(page.length, 1);
        assertEq(page[0], provider);
        assertTrue(providers.isActive(provider));
    }

    function test_Register_AcceptsExactlyMinimumStake() public {
        _register(provider);
        _assertProvider(provider, _expected(MIN_STAKE, vm.getBlockTimestamp()));
        assertTrue(providers.isActive(provider));
        _assertHeldMatchesBalance();
    }

    function test_Register_EmitsProviderRegistered() public {
        uint256 stake = MIN_STAKE + 1;
        _fundAndApprove(provider, address(providers), stake);
        string[] memory addrs = _addrs();
        bytes32[] memory models = _models();

        vm.expectEmit(true, true, true, true, address(providers));
        emit ProviderRegistry.ProviderRegistered(provider, PEER_ID, addrs, models, PRICE_IN, PRICE_OUT, stake);
        vm.expectEmit(true, true, true, true, address(token));
        emit IERC20.Transfer(provider, address(providers), stake);
        vm.prank(provider);
        providers.register(PEER_ID, addrs, models, PRICE_IN, PRICE_OUT, stake);
    }

    function test_Register_AcceptsEveryLimitAtItsMaximum() public {
        string memory peerId = _repeat("p", 256);
        string[] memory addrs = new string[](16);
        for (uint256 i; i < 16; ++i) {
            addrs[i] = _repeat(bytes1(uint8(0x61 + i)), 256);
        }
        bytes32[] memory models = new bytes32[](32);
        for (uint256 i; i < 32; ++i) {
            models[i] = keccak256(abi.encode(i));
        }
        _fundAndApprove(provider, address(providers), MIN_STAKE);

        vm.prank(provider);
        providers.register(peerId, addrs, models, type(uint128).max, type(uint128).max, MIN_STAKE);

        ProviderRegistry.Provider memory want = _expected(MIN_STAKE, vm.getBlockTimestamp());
        want.peerId = peerId;
        want.multiaddrs = addrs;
        want.modelHashes = models;
        want.priceInputPerMillion = type(uint128).max;
        want.priceOutputPerMillion = type(uint128).max;
        _assertProvider(provider, want);
    }

    function test_Register_RevertsWhen_AlreadyRegistered() public {
        _register(provider);
        _fundAndApprove(provider, address(providers), MIN_STAKE);
        string[] memory addrs = _addrs();
        bytes32[] memory models = _models();

        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__AlreadyRegistered.selector, provider));
        vm.prank(provider);
        providers.register("other-peer", addrs, models, 1, 1, MIN_STAKE);

        _assertProvider(provider, _expected(MIN_STAKE, vm.getBlockTimestamp()));
        assertEq(token.balanceOf(provider), MIN_STAKE, "second stake not pulled");
        assertEq(providers.totalHeld(), MIN_STAKE);
        assertEq(providers.providerCount(), 1);
    }

    function test_Register_RevertsWhen_StakeBelowMinimum() public {
        _fundAndApprove(provider, address(providers), MIN_STAKE);
        string[] memory addrs = _addrs();
        bytes32[] memory models = _models();

        vm.expectRevert(
            abi.encodeWithSelector(ProviderRegistry.Provider__StakeBelowMinimum.selector, MIN_STAKE - 1, MIN_STAKE)
        );
        vm.prank(provider);
        providers.register(PEER_ID, addrs, models, PRICE_IN, PRICE_OUT, MIN_STAKE - 1);

        assertEq(providers.providerCount(), 0);
        assertEq(providers.totalHeld(), 0);
        assertEq(token.balanceOf(provider), MIN_STAKE);
        assertFalse(providers.isActive(provider));
    }

    function testFuzz_Register_RevertsWhen_StakeBelowMinimum(uint256 stake) public {
        stake = bound(stake, 0, MIN_STAKE - 1);
        _fundAndApprove(provider, address(providers), MIN_STAKE);
        string[] memory addrs = _addrs();
        bytes32[] memory models = _models();

        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__StakeBelowMinimum.selector, stake, MIN_STAKE));
        vm.prank(provider);
        providers.register(PEER_ID, addrs, models, PRICE_IN, PRICE_OUT, stake);
    }

    function _expectRegisterReverts(string memory peerId, string[] memory addrs, bytes32[] memory models, bytes4 err)
        internal
    {
        _fundAndApprove(provider, address(providers), MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(err));
        vm.prank(provider);
        providers.register(peerId, addrs, models, PRICE_IN, PRICE_OUT, MIN_STAKE);

        // Nothing of a rejected registration may stick: no entry, no stake pulled.
        assertEq(providers.providerCount(), 0);
        assertEq(providers.totalHeld(), 0);
        assertEq(token.balanceOf(provider), MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__NotRegistered.selector, provider));
        providers.providerOf(provider);
    }

    function test_Register_RevertsWhen_PeerIdEmpty() public {
        _expectRegisterReverts("", _addrs(), _models(), ProviderRegistry.Provider__InvalidPeerId.selector);
    }

    function test_Register_RevertsWhen_PeerIdTooLong() public {
        _expectRegisterReverts(_repeat("p", 257), _addrs(), _models(), ProviderRegistry.Provider__InvalidPeerId.selector);
    }

    function test_Register_RevertsWhen_NoMultiaddrs() public {
        _expectRegisterReverts(
            PEER_ID, new string[](0), _models(), ProviderRegistry.Provider__InvalidMultiaddrs.selector
        );
    }

    function test_Register_RevertsWhen_TooManyMultiaddrs() public {
        string[] memory addrs = new string[](17);
        for (uint256 i; i < 17; ++i) {
            addrs[i] = MULTIADDR;
        }
        _expectRegisterReverts(PEER_ID, addrs, _models(), ProviderRegistry.Provider__InvalidMultiaddrs.selector);
    }

    function test_Register_RevertsWhen_MultiaddrEmpty() public {
        // The empty one is not the first, so every entry is checked, not only the head.
        string[] memory addrs = new string[](2);
        addrs[0] = MULTIADDR;
        _expectRegisterReverts(PEER_ID, addrs, _models(), ProviderRegistry.Provider__InvalidMultiaddrs.selector);
    }

    function test_Register_RevertsWhen_MultiaddrTooLong() public {
        string[] memory addrs = new string[](2);
        addrs[0] = MULTIADDR;
        addrs[1] = _repeat("a", 257);
        _expectRegisterReverts(PEER_ID, addrs, _models(), ProviderRegistry.Provider__InvalidMultiaddrs.selector);
    }

    function test_Register_RevertsWhen_NoModels() public {
        _expectRegisterReverts(PEER_ID, _addrs(), new bytes32[](0), ProviderRegistry.Provider__InvalidModels.selector);
    }

    function test_Register_RevertsWhen_TooManyModels() public {
        bytes32[] memory models = new bytes32[](33);
        for (uint256 i; i < 33; ++i) {
            models[i] = keccak256(abi.encode(i));
        }
        _expectRegisterReverts(PEER_ID, _addrs(), models, ProviderRegistry.Provider__InvalidModels.selector);
    }

    function test_Register_RevertsWhen_ModelHashZero() public {
        bytes32[] memory models = new bytes32[](2);
        models[0] = BASE_MODEL;
        _expectRegisterReverts(PEER_ID, _addrs(), models, ProviderRegistry.Provider__InvalidModels.selector);
    }

    function test_Register_RevertsWhen_AllowanceMissing() public {
        token.mint(provider, MIN_STAKE);
        string[] memory addrs = _addrs();
        bytes32[] memory models = _models();

        vm.expectRevert(
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector, address(providers), 0, MIN_STAKE
            )
        );
        vm.prank(provider);
        providers.register(PEER_ID, addrs, models, PRICE_IN, PRICE_OUT, MIN_STAKE);

        // The record is written before the transfer: the revert must undo it.
        assertEq(providers.providerCount(), 0);
        assertEq(providers.totalHeld(), 0);
        assertFalse(providers.isActive(provider));
    }

    function test_Register_RevertsWhen_BalanceTooLow() public {
        _fundAndApprove(provider, address(providers), MIN_STAKE - 1);
        vm.prank(provider);
        token.approve(address(providers), MIN_STAKE);
        string[] memory addrs = _addrs();
        bytes32[] memory models = _models();

        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, provider, MIN_STAKE - 1, MIN_STAKE)
        );
        vm.prank(provider);
        providers.register(PEER_ID, addrs, models, PRICE_IN, PRICE_OUT, MIN_STAKE);

        assertEq(providers.providerCount(), 0);
        assertEq(providers.totalHeld(), 0);
    }

    // ------------------------------------------------------------- update

    function test_Update_ReplacesRecordAndKeepsStake() public {
        uint256 t0 = vm.getBlockTimestamp();
        string[] memory addrs = new string[](3);
        addrs[0] = MULTIADDR;
        addrs[1] = "/ip4/10.0.0.1/tcp/4001";
        addrs[2] = "/ip6/::1/tcp/4001";
        bytes32[] memory models = new bytes32[](2);
        models[0] = BASE_MODEL;
        models[1] = OTHER_MODEL;
        _fundAndApprove(provider, address(providers), MIN_STAKE + 10);
        vm.prank(provider);
        providers.register(PEER_ID, addrs, models, PRICE_IN, PRICE_OUT, MIN_STAKE + 10);
        vm.prank(provider);
        providers.requestUnbond(10);
        vm.warp(t0 + 1 days);

        // Shorter arrays than before: no stale entry of the old record may survive.
        string[] memory newAddrs = new string[](1);
        newAddrs[0] = "/dns4/new.example/tcp/443/wss";
        bytes32[] memory newModels = new bytes32[](1);
        newModels[0] = OTHER_MODEL;
        vm.prank(provider);
        providers.update("12D3KooWNewPeer", newAddrs, newModels, 11, 22);

        ProviderRegistry.Provider memory want = _expected(MIN_STAKE, t0);
        want.peerId = "12D3KooWNewPeer";
        want.multiaddrs = newAddrs;
        want.modelHashes = newModels;
        want.priceInputPerMillion = 11;
        want.priceOutputPerMillion = 22;
        want.unbonding = 10;
        want.unbondingAvailableAt = uint64(t0 + UNBONDING_DELAY);
        _assertProvider(provider, want);
        assertEq(providers.totalHeld(), MIN_STAKE + 10);
        assertEq(providers.providerCount(), 1);
        assertTrue(providers.isActive(provider));
    }

    function test_Update_EmitsProviderUpdated() public {
        _register(provider);
        string[] memory addrs = _addrs();
        bytes32[] memory models = new bytes32[](1);
        models[0] = OTHER_MODEL;

        vm.expectEmit(true, true, true, true, address(providers));
        emit ProviderRegistry.ProviderUpdated(provider, "peer-2", addrs, models, 1, 2);
        vm.prank(provider);
        providers.update("peer-2", addrs, models, 1, 2);
    }

    function test_Update_RevertsWhen_NotRegistered() public {
        string[] memory addrs = _addrs();
        bytes32[] memory models = _models();
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__NotRegistered.selector, stranger));
        vm.prank(stranger);
        providers.update(PEER_ID, addrs, models, PRICE_IN, PRICE_OUT);
    }

    function _expectUpdateReverts(string memory peerId, string[] memory addrs, bytes32[] memory models, bytes4 err)
        internal
    {
        _register(provider);
        vm.expectRevert(abi.encodeWithSelector(err));
        vm.prank(provider);
        providers.update(peerId, addrs, models, 1, 2);
        _assertProvider(provider, _expected(MIN_STAKE, vm.getBlockTimestamp()));
    }

    function test_Update_RevertsWhen_PeerIdInvalid() public {
        _expectUpdateReverts(_repeat("p", 257), _addrs(), _models(), ProviderRegistry.Provider__InvalidPeerId.selector);
    }

    function test_Update_RevertsWhen_PeerIdEmpty() public {
        _expectUpdateReverts("", _addrs(), _models(), ProviderRegistry.Provider__InvalidPeerId.selector);
    }

    function test_Update_RevertsWhen_MultiaddrsInvalid() public {
        _expectUpdateReverts(PEER_ID, new string[](1), _models(), ProviderRegistry.Provider__InvalidMultiaddrs.selector);
    }

    function test_Update_RevertsWhen_ModelsInvalid() public {
        _expectUpdateReverts(PEER_ID, _addrs(), new bytes32[](0), ProviderRegistry.Provider__InvalidModels.selector);
    }

    // ------------------------------------------------------------- addStake

    function test_AddStake_IncreasesStakeAndTotalHeld() public {
        _register(provider);
        _fundAndApprove(provider, address(providers), 25 * USD);

        vm.prank(provider);
        providers.addStake(25 * USD);

        _assertProvider(provider, _expected(MIN_STAKE + 25 * USD, vm.getBlockTimestamp()));
        assertEq(providers.totalHeld(), MIN_STAKE + 25 * USD);
        assertEq(token.balanceOf(provider), 0);
        _assertHeldMatchesBalance();
    }

    function test_AddStake_EmitsStakeAdded() public {
        _register(provider);
        _fundAndApprove(provider, address(providers), 3);

        vm.expectEmit(true, true, true, true, address(providers));
        emit ProviderRegistry.StakeAdded(provider, 3, MIN_STAKE + 3);
        vm.expectEmit(true, true, true, true, address(token));
        emit IERC20.Transfer(provider, address(providers), 3);
        vm.prank(provider);
        providers.addStake(3);
    }

    function test_AddStake_RevertsWhen_ZeroAmount() public {
        _register(provider);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__ZeroAmount.selector));
        vm.prank(provider);
        providers.addStake(0);
        assertEq(providers.providerOf(provider).stake, MIN_STAKE);
    }

    function test_AddStake_RevertsWhen_NotRegistered() public {
        _fundAndApprove(stranger, address(providers), MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__NotRegistered.selector, stranger));
        vm.prank(stranger);
        providers.addStake(MIN_STAKE);
        assertEq(token.balanceOf(stranger), MIN_STAKE);
        assertEq(providers.totalHeld(), 0);
        assertEq(providers.providerCount(), 0, "adding stake must not register");
    }

    function test_AddStake_RevertsWhen_AllowanceMissing() public {
        _register(provider);
        token.mint(provider, 5);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(providers), 0, 5)
        );
        vm.prank(provider);
        providers.addStake(5);
        assertEq(providers.providerOf(provider).stake, MIN_STAKE);
        assertEq(providers.totalHeld(), MIN_STAKE);
    }

    // ------------------------------------------------------------- requestUnbond

    function test_RequestUnbond_MovesStakeToUnbonding() public {
        _registerWithStake(provider, MIN_STAKE + 40);
        uint256 t = vm.getBlockTimestamp();

        vm.prank(provider);
        uint256 availableAt = providers.requestUnbond(30);

        assertEq(availableAt, t + UNBONDING_DELAY);
        ProviderRegistry.Provider memory want = _expected(MIN_STAKE + 10, t);
        want.unbonding = 30;
        want.unbondingAvailableAt = uint64(t + UNBONDING_DELAY);
        _assertProvider(provider, want);
        // Unbonding stake is still held: nothing leaves before the delay.
        assertEq(providers.totalHeld(), MIN_STAKE + 40);
        assertEq(token.balanceOf(provider), 0);
        _assertHeldMatchesBalance();
        assertTrue(providers.isActive(provider));
    }

    function test_RequestUnbond_EmitsUnbondRequested() public {
        _registerWithStake(provider, MIN_STAKE + 40);
        uint256 availableAt = vm.getBlockTimestamp() + UNBONDING_DELAY;

        vm.expectEmit(true, true, true, true, address(providers));
        emit ProviderRegistry.UnbondRequested(provider, 30, MIN_STAKE + 10, availableAt);
        vm.prank(provider);
        providers.requestUnbond(30);
    }

    function test_RequestUnbond_RevertsWhen_ZeroAmount() public {
        _register(provider);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__ZeroAmount.selector));
        vm.prank(provider);
        providers.requestUnbond(0);
        _assertProvider(provider, _expected(MIN_STAKE, vm.getBlockTimestamp()));
    }

    function test_RequestUnbond_RevertsWhen_NotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__NotRegistered.selector, stranger));
        vm.prank(stranger);
        providers.requestUnbond(1);
    }

    function test_RequestUnbond_RevertsWhen_AmountAboveStake() public {
        _register(provider);
        vm.prank(provider);
        providers.requestUnbond(MIN_STAKE / 2);

        // Stake already unbonding cannot be unbonded twice: the bound is the remaining stake.
        uint256 remaining = MIN_STAKE - MIN_STAKE / 2;
        vm.expectRevert(
            abi.encodeWithSelector(ProviderRegistry.Provider__InsufficientStake.selector, remaining, remaining + 1)
        );
        vm.prank(provider);
        providers.requestUnbond(remaining + 1);

        ProviderRegistry.Provider memory got = providers.providerOf(provider);
        assertEq(got.stake, remaining);
        assertEq(got.unbonding, MIN_STAKE / 2);
    }

    function test_RequestUnbond_SecondRequestAccumulatesAndRestartsDelay() public {
        _registerWithStake(provider, MIN_STAKE + 100);
        uint256 t0 = vm.getBlockTimestamp();
        vm.prank(provider);
        providers.requestUnbond(10);

        vm.warp(t0 + 3 days);
        vm.prank(provider);
        uint256 availableAt = providers.requestUnbond(20);
        assertEq(availableAt, t0 + 3 days + UNBONDING_DELAY);

        ProviderRegistry.Provider memory got = providers.providerOf(provider);
        assertEq(got.stake, MIN_STAKE + 70);
        assertEq(got.unbonding, 30);
        assertEq(got.unbondingAvailableAt, availableAt);

        // The first request's own date no longer frees anything: all of it waits for the new one.
        vm.warp(t0 + UNBONDING_DELAY);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__UnbondingNotReady.selector, availableAt));
        vm.prank(provider);
        providers.withdrawUnbonded(provider);

        vm.warp(availableAt);
        vm.prank(provider);
        providers.withdrawUnbonded(provider);
        assertEq(token.balanceOf(provider), 30);
        _assertHeldMatchesBalance();
    }

    function test_IsActive_TurnsFalseBelowMinimumStake() public {
        _registerWithStake(provider, MIN_STAKE + 10);
        assertTrue(providers.isActive(provider));

        vm.prank(provider);
        providers.requestUnbond(10);
        assertTrue(providers.isActive(provider), "exactly the minimum is active");

        vm.prank(provider);
        providers.requestUnbond(1);
        assertFalse(providers.isActive(provider), "one unit below the minimum is inactive");
        // Inactive is not unregistered: the record and its place in the list remain.
        assertEq(providers.providerCount(), 1);
        assertEq(providers.providerOf(provider).stake, MIN_STAKE - 1);

        _fundAndApprove(provider, address(providers), 1);
        vm.prank(provider);
        providers.addStake(1);
        assertTrue(providers.isActive(provider), "topping up reactivates");
    }

    /// forge-config: fuzz.runs = 128
    function testFuzz_RequestUnbond_SplitsStake(uint256 stake, uint256 amount) public {
        stake = bound(stake, MIN_STAKE, 1_000_000 * USD);
        amount = bound(amount, 1, stake);
        _registerWithStake(provider, stake);
        uint256 t = vm.getBlockTimestamp();

        vm.prank(provider);
        uint256 availableAt = providers.requestUnbond(amount);

        ProviderRegistry.Provider memory got = providers.providerOf(provider);
        assertEq(availableAt, t + UNBONDING_DELAY);
        assertEq(got.stake, stake - amount);
        assertEq(got.unbonding, amount);
        assertEq(got.stake + got.unbonding, providers.totalHeld());
        assertEq(providers.isActive(provider), stake - amount >= MIN_STAKE);
        _assertHeldMatchesBalance();
    }

    // ------------------------------------------------------------- withdrawUnbonded

    function test_WithdrawUnbonded_RespectsDelayToTheSecond() public {
        _registerWithStake(provider, MIN_STAKE + 40);
        vm.prank(provider);
        uint256 availableAt = providers.requestUnbond(40);

        vm.warp(availableAt - 1);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__UnbondingNotReady.selector, availableAt));
        vm.prank(provider);
        providers.withdrawUnbonded(recipient);
        assertEq(token.balanceOf(recipient), 0);
        assertEq(providers.providerOf(provider).unbonding, 40);

        vm.warp(availableAt);
        vm.prank(provider);
        providers.withdrawUnbonded(recipient);

        assertEq(token.balanceOf(recipient), 40);
        assertEq(token.balanceOf(provider), 0);
        ProviderRegistry.Provider memory got = providers.providerOf(provider);
        assertEq(got.stake, MIN_STAKE, "stake untouched");
        assertEq(got.unbonding, 0);
        assertEq(got.unbondingAvailableAt, 0);
        assertEq(providers.totalHeld(), MIN_STAKE);
        _assertHeldMatchesBalance();
    }

    function test_WithdrawUnbonded_EmitsStakeWithdrawn() public {
        _registerWithStake(provider, MIN_STAKE + 40);
        vm.prank(provider);
        uint256 availableAt = providers.requestUnbond(40);
        vm.warp(availableAt);

        vm.expectEmit(true, true, true, true, address(providers));
        emit ProviderRegistry.StakeWithdrawn(provider, recipient, 40);
        vm.expectEmit(true, true, true, true, address(token));
        emit IERC20.Transfer(address(providers), recipient, 40);
        vm.prank(provider);
        providers.withdrawUnbonded(recipient);
    }

    function test_WithdrawUnbonded_RevertsWhen_RecipientZero() public {
        _register(provider);
        vm.prank(provider);
        uint256 availableAt = providers.requestUnbond(1);
        vm.warp(availableAt);

        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__ZeroAddress.selector));
        vm.prank(provider);
        providers.withdrawUnbonded(address(0));
        assertEq(providers.providerOf(provider).unbonding, 1);
        assertEq(providers.totalHeld(), MIN_STAKE);
    }

    function test_WithdrawUnbonded_RevertsWhen_NotRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__NotRegistered.selector, stranger));
        vm.prank(stranger);
        providers.withdrawUnbonded(stranger);
    }

    function test_WithdrawUnbonded_RevertsWhen_NothingUnbonding() public {
        _register(provider);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__NothingUnbonding.selector));
        vm.prank(provider);
        providers.withdrawUnbonded(provider);
        assertEq(providers.totalHeld(), MIN_STAKE);
    }

    function test_WithdrawUnbonded_RevertsWhen_AlreadyWithdrawn() public {
        _registerWithStake(provider, MIN_STAKE + 5);
        vm.prank(provider);
        uint256 availableAt = providers.requestUnbond(5);
        vm.warp(availableAt);
        vm.prank(provider);
        providers.withdrawUnbonded(provider);

        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__NothingUnbonding.selector));
        vm.prank(provider);
        providers.withdrawUnbonded(provider);
        assertEq(token.balanceOf(provider), 5, "paid once only");
        _assertHeldMatchesBalance();
    }

    function test_WithdrawUnbonded_FullExitKeepsProviderRegisteredButInactive() public {
        _register(provider);
        vm.prank(provider);
        uint256 availableAt = providers.requestUnbond(MIN_STAKE);
        vm.warp(availableAt);
        vm.prank(provider);
        providers.withdrawUnbonded(provider);

        assertEq(token.balanceOf(provider), MIN_STAKE);
        assertEq(providers.totalHeld(), 0);
        assertEq(token.balanceOf(address(providers)), 0);
        assertFalse(providers.isActive(provider));
        assertEq(providers.providerCount(), 1, "providerCount counts providers ever registered");
        assertEq(providers.providerOf(provider).stake, 0);

        // Coming back is a top-up, not a second registration.
        _fundAndApprove(provider, address(providers), MIN_STAKE);
        string[] memory addrs = _addrs();
        bytes32[] memory models = _models();
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__AlreadyRegistered.selector, provider));
        vm.prank(provider);
        providers.register(PEER_ID, addrs, models, PRICE_IN, PRICE_OUT, MIN_STAKE);
        vm.prank(provider);
        providers.addStake(MIN_STAKE);
        assertTrue(providers.isActive(provider));
        _assertHeldMatchesBalance();
    }

    /// forge-config: fuzz.runs = 128
    function testFuzz_WithdrawUnbonded_OnlyFromAvailableAt(uint256 amount, uint256 wait) public {
        uint256 stake = MIN_STAKE * 3;
        amount = bound(amount, 1, stake);
        wait = bound(wait, 0, 2 * UNBONDING_DELAY);
        _registerWithStake(provider, stake);
        uint256 t = vm.getBlockTimestamp();
        vm.prank(provider);
        uint256 availableAt = providers.requestUnbond(amount);

        vm.warp(t + wait);
        if (wait < UNBONDING_DELAY) {
            vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.Provider__UnbondingNotReady.selector, availableAt));
            vm.prank(provider);
            providers.withdrawUnbonded(recipient);
            assertEq(token.balanceOf(recipient), 0);
            assertEq(providers.totalHeld(), stake);
        } else {
            vm.prank(provider);
            providers.withdrawUnbonded(recipient);
            assertEq(token.balanceOf(recipient), amount);
            assertEq(providers.totalHeld(), stake - amount);
            assertEq(providers.providerOf(provider).stake, stake - amount);
        }
        _assertHeldMatchesBalance();
    }

    // ------------------------------------------------------------- providers() pagination

    function test_Providers_PaginatesInRegistrationOrder() public {
        address a = makeAddr("provider-a");
        address b = makeAddr("provider-b");
        address c = makeAddr("provider-c");
        _register(a);
        _register(b);
        _register(c);
        assertEq(providers.providerCount(), 3);

        address[] memory page = providers.providers(0, 3);
        assertEq(page.length, 3);
        assertEq(page[0], a);
        assertEq(page[1], b);
        assertEq(page[2], c);

        page = providers.providers(0, 2);
        assertEq(page.length, 2);
        assertEq(page[0], a);
        assertEq(page[1], b);

        page = providers.providers(2, 1);
        assertEq(page.length, 1);
        assertEq(page[0], c);

        page = providers.providers(1, 10);
        assertEq(page.length, 2, "limit past the end is cut at the end");
        assertEq(page[0], b);
        assertEq(page[1], c);

        page = providers.providers(0, type(uint256).max);
        assertEq(page.length, 3, "a huge limit from offset 0 returns all");

        assertEq(providers.providers(0, 0).length, 0, "zero limit");
        assertEq(providers.providers(3, 1).length, 0, "offset at the end");
        assertEq(providers.providers(100, 5).length, 0, "offset past the end");
        assertEq(providers.providers(type(uint256).max, type(uint256).max).length, 0, "huge offset");
    }

    /// @dev Regression: `offset + limit` used to overflow (Panic 0x11) for a huge limit past offset 0, the
    /// natural way to ask for "all the rest" (fixed in 98259b4).
    function test_Providers_HugeLimitPastOffsetZeroReturnsTheRest() public {
        address a = makeAddr("provider-a");
        address b = makeAddr("provider-b");
        _register(a);
        _register(b);

        address[] memory page = providers.providers(1, type(uint256).max);
        assertEq(page.length, 1);
        assertEq(page[0], b);
        page = providers.providers(1, type(uint256).max - 1);
        assertEq(page.length, 1);
        assertEq(providers.providers(2, type(uint256).max).length, 0);
        assertEq(a, providers.providers(0, 1)[0]);
    }

    // ------------------------------------------------------------- accounting across operations

    function test_TotalHeld_MatchesBalanceAcrossOperations() public {
        address a = makeAddr("provider-a");
        address b = makeAddr("provider-b");
        uint256 t0 = vm.getBlockTimestamp();

        _registerWithStake(a, MIN_STAKE + 7);
        _assertHeldMatchesBalance();
        _registerWithStake(b, MIN_STAKE * 2);
        _assertHeldMatchesBalance();

        _fundAndApprove(a, address(providers), 13);
        vm.prank(a);
        providers.addStake(13);
        _assertHeldMatchesBalance();

        vm.prank(a);
        providers.requestUnbond(20);
        vm.prank(b);
        providers.requestUnbond(MIN_STAKE * 2);
        _assertHeldMatchesBalance();
        assertEq(providers.totalHeld(), MIN_STAKE * 3 + 20);

        // Withdrawing to a third party must debit totalHeld exactly as withdrawing to oneself does.
        vm.warp(t0 + UNBONDING_DELAY);
        vm.prank(a);
        providers.withdrawUnbonded(a);
        _assertHeldMatchesBalance();
        vm.prank(b);
        providers.withdrawUnbonded(stranger);
        _assertHeldMatchesBalance();
        assertEq(providers.totalHeld(), MIN_STAKE);
        assertEq(token.balanceOf(a), 20);
        assertEq(token.balanceOf(stranger), MIN_STAKE * 2);
    }
}

/// @dev Drives the registry with bounded, always-valid calls from a few providers and mirrors what it holds.
contract ProviderRegistryTestHandler is SoulmeshTest {
    ProviderRegistry public immutable registry;
    IERC20 public immutable stakeToken;
    address[] internal _actors;
    mapping(address => bool) public registered;
    uint256 public ghostHeld;
    uint256 public calls;

    constructor(ProviderRegistry registry_, address[] memory actors_) {
        registry = registry_;
        stakeToken = registry_.stakeToken();
        _actors = actors_;
    }

    function actors() external view returns (address[] memory) {
        return _actors;
    }

    function register(uint256 actorSeed, uint256 stake) external {
        address a = _actors[actorSeed % _actors.length];
        if (registered[a]) return;
        stake = bound(stake, registry.minStake(), registry.minStake() * 10);
        string[] memory addrs = new string[](1);
        addrs[0] = "/ip4/127.0.0.1/tcp/4001";
        bytes32[] memory models = new bytes32[](1);
        models[0] = keccak256("model");
        vm.prank(a);
        registry.register("peer", addrs, models, 1, 1, stake);
        registered[a] = true;
        ghostHeld += stake;
        ++calls;
    }

    function addStake(uint256 actorSeed, uint256 amount) external {
        address a = _actors[actorSeed % _actors.length];
        if (!registered[a]) return;
        amount = bound(amount, 1, registry.minStake());
        vm.prank(a);
        registry.addStake(amount);
        ghostHeld += amount;
        ++calls;
    }

    function requestUnbond(uint256 actorSeed, uint256 amount) external {
        address a = _actors[actorSeed % _actors.length];
        if (!registered[a]) return;
        uint256 stake = registry.providerOf(a).stake;
        if (stake == 0) return;
        amount = bound(amount, 1, stake);
        vm.prank(a);
        registry.requestUnbond(amount);
        ++calls;
    }

    function withdrawUnbonded(uint256 actorSeed) external {
        address a = _actors[actorSeed % _actors.length];
        if (!registered[a]) return;
        ProviderRegistry.Provider memory p = registry.providerOf(a);
        if (p.unbonding == 0) return;
        if (vm.getBlockTimestamp() < p.unbondingAvailableAt) vm.warp(p.unbondingAvailableAt);
        vm.prank(a);
        registry.withdrawUnbonded(a);
        ghostHeld -= p.unbonding;
        ++calls;
    }

    function sumOfRecords() external view returns (uint256 sum) {
        for (uint256 i; i < _actors.length; ++i) {
            if (!registered[_actors[i]]) continue;
            ProviderRegistry.Provider memory p = registry.providerOf(_actors[i]);
            sum += p.stake + p.unbonding;
        }
    }
}

contract ProviderRegistryInvariantTest is SoulmeshFixture {
    ProviderRegistryTestHandler internal handler;

    function setUp() public override {
        super.setUp();
        address[] memory actors = new address[](3);
        actors[0] = makeAddr("provider-a");
        actors[1] = makeAddr("provider-b");
        actors[2] = makeAddr("provider-c");
        handler = new ProviderRegistryTestHandler(providers, actors);
        for (uint256 i; i < actors.length; ++i) {
            _fundAndApprove(actors[i], address(providers), 1_000_000 * USD);
        }

        bytes4[] memory selectors = new bytes4[](4);
        selectors[0] = ProviderRegistryTestHandler.register.selector;
        selectors[1] = ProviderRegistryTestHandler.addStake.selector;
        selectors[2] = ProviderRegistryTestHandler.requestUnbond.selector;
        selectors[3] = ProviderRegistryTestHandler.withdrawUnbonded.selector;
        targetContract(address(handler));
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    /// forge-config: invariant.runs = 32
    /// forge-config: invariant.depth = 32
    function invariant_TotalHeldEqualsBalanceAndRecords() public view {
        uint256 held = providers.totalHeld();
        assertEq(held, token.balanceOf(address(providers)), "totalHeld != balance");
        assertEq(held, handler.ghostHeld(), "totalHeld != ghost");
        assertEq(held, handler.sumOfRecords(), "totalHeld != sum of stake and unbonding");
    }
}
