// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {SoulmeshTest} from "./SoulmeshTest.sol";
import {Vm} from "./Vm.sol";

// Self-tests of the test base: they prove each helper and cheatcode behaves as the base
// documents under Hardhat's runner (EDR), so a broken helper fails here rather than as a
// mysteriously passing production test. Fuzz and invariant budgets are set inline, without a
// profile prefix, so the suite stays fast under every `test.solidity` profile. Fixtures are
// prefixed `SelfTest` so their bare artifact names cannot clash with production contracts.

/// @dev A contract to aim cheatcodes and expectations at.
contract SelfTestTarget {
    error Unauthorized();
    error TooLarge(uint256 value, uint256 limit);

    event Stored(address indexed by, uint256 indexed key, uint256 value);

    uint256 public constant LIMIT = 100;

    address public immutable owner;
    mapping(uint256 => uint256) public values;

    constructor(address owner_) {
        owner = owner_;
    }

    function store(uint256 key, uint256 value) external {
        if (msg.sender != owner) revert Unauthorized();
        if (value > LIMIT) revert TooLarge(value, LIMIT);
        values[key] = value;
        emit Stored(msg.sender, key, value);
    }

    function requireNonZero(uint256 value) external pure {
        require(value != 0, "zero");
    }

    function caller() external view returns (address sender, address origin) {
        return (msg.sender, tx.origin);
    }

    function quote(address oracle) external view returns (uint256) {
        return SelfTestOracle(oracle).price();
    }
}

interface SelfTestOracle {
    function price() external view returns (uint256);
}

/// @dev Exposes the base's internal helpers as external calls, so `expectRevert` can catch
///      their failures (it only watches calls below the test's own frame).
contract SelfTestAssertionHarness is SoulmeshTest {
    function eqUint(uint256 a, uint256 b) external pure {
        assertEq(a, b);
    }

    function eqUintMsg(uint256 a, uint256 b, string calldata err) external pure {
        assertEq(a, b, err);
    }

    function eqInt(int256 a, int256 b) external pure {
        assertEq(a, b);
    }

    function eqAddress(address a, address b) external pure {
        assertEq(a, b);
    }

    function eqBytes32(bytes32 a, bytes32 b) external pure {
        assertEq(a, b);
    }

    function eqBool(bool a, bool b) external pure {
        assertEq(a, b);
    }

    function eqString(string calldata a, string calldata b) external pure {
        assertEq(a, b);
    }

    function eqBytes(bytes calldata a, bytes calldata b) external pure {
        assertEq(a, b);
    }

    function isTrue(bool c) external pure {
        assertTrue(c);
    }

    function isFalse(bool c, string calldata err) external pure {
        assertFalse(c, err);
    }

    function gt(uint256 a, uint256 b) external pure {
        assertGt(a, b);
    }

    function ge(int256 a, int256 b) external pure {
        assertGe(a, b);
    }

    function lt(uint256 a, uint256 b) external pure {
        assertLt(a, b);
    }

    function le(uint256 a, uint256 b, string calldata err) external pure {
        assertLe(a, b, err);
    }

    function boundOf(uint256 x, uint256 min, uint256 max) external pure returns (uint256) {
        return bound(x, min, max);
    }
}

contract SoulmeshTestAssertionsTest is SoulmeshTest {
    SelfTestAssertionHarness internal harness;

    function setUp() public {
        harness = new SelfTestAssertionHarness();
    }

    function test_passingAssertionsDoNotRevert() public pure {
        assertEq(uint256(1), 1);
        assertEq(int256(-1), -1, "int");
        assertEq(address(0xBEEF), address(0xBEEF));
        assertEq(keccak256("a"), keccak256("a"));
        assertEq(true, true);
        assertEq(string("soul"), "soul");
        assertEq(bytes(hex"c0ffee"), hex"c0ffee");
        assertTrue(true);
        assertFalse(false, "false");
        assertGt(uint256(2), 1);
        assertGt(int256(-1), -2);
        assertGe(uint256(2), 2);
        assertGe(int256(-2), -2);
        assertLt(uint256(1), 2);
        assertLt(int256(-2), -1);
        assertLe(uint256(2), 2);
        assertLe(int256(-3), -2, "le");
    }

    function test_failuresRevertWithBothValues() public {
        vm.expectRevert(bytes("assertion failed: 1 != 2"));
        harness.eqUint(1, 2);

        vm.expectRevert(bytes("balance: 1 != 2"));
        harness.eqUintMsg(1, 2, "balance");

        vm.expectRevert(bytes("assertion failed: -1 != 1"));
        harness.eqInt(-1, 1);

        vm.expectRevert(
            bytes(
                "assertion failed: 0x000000000000000000000000000000000000bEEF != 0x0000000000000000000000000000000000000000"
            )
        );
        harness.eqAddress(address(0xBEEF), address(0));

        vm.expectRevert(
            bytes(
                "assertion failed: 0x0000000000000000000000000000000000000000000000000000000000000001 != 0x0000000000000000000000000000000000000000000000000000000000000000"
            )
        );
        harness.eqBytes32(bytes32(uint256(1)), bytes32(0));

        vm.expectRevert(bytes("assertion failed: true != false"));
        harness.eqBool(true, false);

        vm.expectRevert(bytes('assertion failed: "a" != ""'));
        harness.eqString("a", "");

        vm.expectRevert(bytes("assertion failed: 0xc0ffee != 0x"));
        harness.eqBytes(hex"c0ffee", "");

        vm.expectRevert(bytes("assertion failed: expected true, got false"));
        harness.isTrue(false);

        vm.expectRevert(bytes("paused: expected false, got true"));
        harness.isFalse(true, "paused");

        vm.expectRevert(bytes("assertion failed: 1 <= 1"));
        harness.gt(1, 1);

        vm.expectRevert(bytes("assertion failed: -2 < -1"));
        harness.ge(-2, -1);

        vm.expectRevert(bytes("assertion failed: 2 >= 2"));
        harness.lt(2, 2);

        vm.expectRevert(bytes("fee: 3 > 2"));
        harness.le(3, 2, "fee");
    }

    function test_boundKeepsInRangeValuesAndReachesBothEnds() public pure {
        assertEq(bound(5, 1, 10), 5, "in range is unchanged");
        assertEq(bound(0, 10, 20), 10, "0 maps to min");
        assertEq(bound(3, 10, 20), 13, "3 maps to min + 3");
        assertEq(bound(type(uint256).max, 10, 20), 20, "max maps to max");
        assertEq(bound(type(uint256).max - 3, 10, 20), 17, "max - 3 maps to max - 3");
        assertEq(bound(21, 10, 20), 10, "one past max wraps to min");
        assertEq(bound(22, 10, 20), 11, "two past max wraps to min + 1");
        assertEq(bound(31, 10, 20), 20, "a whole range past max wraps to max");
        assertEq(bound(9, 10, 20), 20, "one below min wraps to max");
        assertEq(bound(8, 10, 20), 19, "two below min wraps to max - 1");
        assertEq(bound(123, 7, 7), 7, "a one-value range");
        assertEq(bound(123, 0, type(uint256).max), 123, "the full range");
    }

    function test_boundRejectsInvertedRange() public {
        vm.expectRevert(bytes("bound(uint256,uint256,uint256): max is less than min"));
        harness.boundOf(1, 2, 1);
    }

    /// forge-config: fuzz.runs = 64
    function testFuzz_boundStaysInRange(uint256 x, uint256 a, uint256 b) public pure {
        (uint256 min, uint256 max) = a <= b ? (a, b) : (b, a);
        uint256 result = bound(x, min, max);
        assertGe(result, min);
        assertLe(result, max);
        if (x >= min && x <= max) assertEq(result, x, "in-range input must be unchanged");
    }

    /// forge-config: fuzz.runs = 64
    function testFuzz_assumeDiscardsInputs(uint256 x) public pure {
        vm.assume(x % 2 == 0);
        assertEq(x % 2, 0);
    }
}

contract SoulmeshTestCheatcodesTest is SoulmeshTest {
    SelfTestTarget internal target;
    address internal owner;
    address internal stranger;

    event Stored(address indexed by, uint256 indexed key, uint256 value);

    function setUp() public {
        owner = makeAddr("owner");
        stranger = makeAddr("stranger");
        target = new SelfTestTarget(owner);
    }

    function test_makeAddrIsDeterministicAndMatchesItsKey() public {
        (address addr, uint256 key) = makeAddrAndKey("owner");
        assertEq(addr, owner);
        assertEq(key, uint256(keccak256("owner")));
        assertEq(vm.addr(key), addr);
        assertTrue(makeAddr("a") != makeAddr("b"), "names give distinct addresses");
    }

    function test_signRoundTripsThroughEcrecover() public {
        (address signer, uint256 key) = makeAddrAndKey("signer");
        bytes32 digest = keccak256("soulmesh receipt");
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        assertEq(ecrecover(digest, v, r, s), signer);
        assertTrue(v == 27 || v == 28, "v is ecrecover-ready");
    }

    function test_expectRevertWithCustomErrorSelector() public {
        vm.expectRevert(SelfTestTarget.Unauthorized.selector);
        target.store(1, 1);
    }

    function test_expectRevertWithEncodedArguments() public {
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(SelfTestTarget.TooLarge.selector, 101, 100));
        target.store(1, 101);
    }

    function test_expectRevertWithReasonAndWithAnything() public {
        vm.expectRevert(bytes("zero"));
        target.requireNonZero(0);

        vm.expectRevert();
        target.requireNonZero(0);
    }

    function test_expectPartialRevertIgnoresArguments() public {
        vm.prank(owner);
        vm.expectPartialRevert(SelfTestTarget.TooLarge.selector);
        target.store(1, 999);
    }

    function test_expectEmitChecksTopicsDataAndEmitter() public {
        vm.expectEmit(true, true, false, true, address(target));
        emit Stored(owner, 7, 42);
        vm.prank(owner);
        target.store(7, 42);

        vm.expectEmit();
        emit Stored(owner, 8, 43);
        vm.prank(owner);
        target.store(8, 43);
    }

    function test_recordLogsCapturesEmittedEvents() public {
        vm.recordLogs();
        vm.prank(owner);
        target.store(3, 9);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(logs.length, 1);
        assertEq(logs[0].emitter, address(target));
        assertEq(logs[0].topics.length, 3);
        assertEq(logs[0].topics[0], Stored.selector);
        assertEq(logs[0].topics[1], bytes32(uint256(uint160(owner))));
        assertEq(logs[0].topics[2], bytes32(uint256(3)));
        assertEq(abi.decode(logs[0].data, (uint256)), 9);
    }

    function test_prankSetsSenderAndOrigin() public {
        vm.prank(stranger);
        (address sender, address origin) = target.caller();
        assertEq(sender, stranger);
        assertTrue(origin != stranger, "prank(address) leaves tx.origin alone");

        vm.prank(stranger, owner);
        (sender, origin) = target.caller();
        assertEq(sender, stranger);
        assertEq(origin, owner);

        (sender,) = target.caller();
        assertEq(sender, address(this), "prank lasts one call");
    }

    function test_startPrankLastsUntilStopPrank() public {
        vm.startPrank(owner);
        target.store(1, 1);
        target.store(2, 2);
        vm.stopPrank();
        assertEq(target.values(2), 2);

        vm.expectRevert(SelfTestTarget.Unauthorized.selector);
        target.store(3, 3);
    }

    function test_warpRollChainIdAndDeal() public {
        vm.warp(1_700_000_000);
        vm.roll(12_345);
        vm.chainId(8453);
        vm.deal(stranger, 3 ether);
        assertEq(block.timestamp, 1_700_000_000);
        assertEq(vm.getBlockTimestamp(), 1_700_000_000);
        assertEq(block.number, 12_345);
        assertEq(vm.getBlockNumber(), 12_345);
        assertEq(block.chainid, 8453);
        assertEq(stranger.balance, 3 ether);
    }

    function test_storeLoadAndEtch() public {
        bytes32 slot = keccak256(abi.encode(uint256(5), uint256(0))); // values[5]: mapping at slot 0
        vm.store(address(target), slot, bytes32(uint256(77)));
        assertEq(target.values(5), 77);
        assertEq(vm.load(address(target), slot), bytes32(uint256(77)));

        address clone = makeAddr("clone");
        vm.etch(clone, address(target).code);
        assertEq(SelfTestTarget(clone).LIMIT(), 100);
    }

    function test_mockCallAndExpectCall() public {
        address oracle = makeAddr("oracle");
        // Solidity checks for code before calls that return nothing; giving the oracle code keeps
        // this test independent of which kind of call the contract under test makes.
        vm.etch(oracle, hex"00");
        vm.mockCall(oracle, abi.encodeWithSelector(SelfTestOracle.price.selector), abi.encode(uint256(1234)));
        vm.expectCall(oracle, abi.encodeWithSelector(SelfTestOracle.price.selector));
        assertEq(target.quote(oracle), 1234);

        vm.clearMockedCalls();
        vm.expectRevert();
        target.quote(oracle);
    }

    function test_snapshotStateAndRevertToState() public {
        vm.prank(owner);
        target.store(1, 10);
        uint256 snapshot = vm.snapshotState();

        vm.prank(owner);
        target.store(1, 20);
        vm.warp(5_000);
        assertEq(target.values(1), 20);

        assertTrue(vm.revertToState(snapshot), "revert to a live snapshot succeeds");
        assertEq(target.values(1), 10);
        assertTrue(block.timestamp != 5_000, "block env is restored too");

        assertTrue(vm.revertToStateAndDelete(snapshot), "the snapshot survives revertToState");
        assertFalse(vm.revertToState(snapshot), "a deleted snapshot is gone");
    }

    function test_envOrFallsBackToTheDefault() public view {
        assertEq(vm.envOr("SOULMESH_TEST_BASE_UNSET_VARIABLE", uint256(42)), 42);
        assertTrue(vm.envOr("SOULMESH_TEST_BASE_UNSET_VARIABLE", true));
    }

    function test_labelAcceptsAnyAddress() public {
        // Labels only show in traces; this checks the cheatcode is accepted.
        vm.label(address(target), "target");
    }
}

// ------------------------------------------------------------------ invariant fixtures

/// @dev Deliberately unguarded, so a direct call from the fuzzer desynchronises it from its handler.
contract SelfTestCounter {
    uint256 public value;

    function add(uint256 amount) external {
        value += amount;
    }

    function sub(uint256 amount) external {
        value -= amount;
    }
}

/// @dev Drives `SelfTestCounter` within bounds and mirrors what it should hold.
contract SelfTestCounterHandler is SoulmeshTest {
    SelfTestCounter public immutable counter;
    address public immutable alice;
    address public immutable bob;

    uint256 public ghostValue;
    uint256 public calls;
    uint256 public callsFromOthers;
    uint256 public callsFromBob;

    constructor(address alice_, address bob_) {
        counter = new SelfTestCounter();
        alice = alice_;
        bob = bob_;
    }

    function add(uint256 amount) external {
        amount = bound(amount, 0, 1e24);
        counter.add(amount);
        ghostValue += amount;
        _record();
    }

    function sub(uint256 amount) external {
        amount = bound(amount, 0, ghostValue);
        counter.sub(amount);
        ghostValue -= amount;
        _record();
    }

    /// @dev Breaks the invariant; only `targetSelector` keeps the fuzzer away from it.
    function desync() external {
        counter.add(1);
        _record();
    }

    function _record() private {
        ++calls;
        if (msg.sender == bob) ++callsFromBob;
        else if (msg.sender != alice) ++callsFromOthers;
    }
}

/// @dev Proves the runner reads targetContracts, targetSelectors, targetSenders and excludeSenders:
///      the invariants below fail if any of them is ignored (`desync` and the unguarded
///      `SelfTestCounter` break the ghost; random senders or bob break the sender check).
contract SoulmeshTestInvariantTargetingTest is SoulmeshTest {
    SelfTestCounterHandler internal handler;

    function setUp() public {
        address alice = makeAddr("alice");
        address bob = makeAddr("bob");
        handler = new SelfTestCounterHandler(alice, bob);

        bytes4[] memory selectors = new bytes4[](2);
        selectors[0] = SelfTestCounterHandler.add.selector;
        selectors[1] = SelfTestCounterHandler.sub.selector;
        targetContract(address(handler));
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
        targetSender(alice);
        targetSender(bob);
        excludeSender(bob);
    }

    /// forge-config: invariant.runs = 16
    /// forge-config: invariant.depth = 16
    function invariant_counterMatchesGhost() public view {
        assertEq(handler.counter().value(), handler.ghostValue());
    }

    /// forge-config: invariant.runs = 16
    /// forge-config: invariant.depth = 16
    function invariant_onlyTargetedSendersCall() public view {
        assertEq(handler.callsFromOthers(), 0, "calls from untargeted senders");
        assertEq(handler.callsFromBob(), 0, "calls from an excluded sender");
    }
}

/// @dev Proves the invariant runner really calls its targets, within the configured depth, so the
///      invariants above cannot pass by never running. Kept apart from them because the shrinker
///      treats an `afterInvariant` failure as a failure too: next to a real one it would shrink
///      every counterexample down to the empty sequence.
contract SoulmeshTestInvariantLivenessTest is SoulmeshTest {
    /// @dev Must equal the inline `invariant.depth` below.
    uint256 internal constant DEPTH = 16;

    SelfTestCounterHandler internal handler;

    function setUp() public {
        // Senders are not under test here, so any will do.
        handler = new SelfTestCounterHandler(address(this), address(this));
        bytes4[] memory selectors = new bytes4[](2);
        selectors[0] = SelfTestCounterHandler.add.selector;
        selectors[1] = SelfTestCounterHandler.sub.selector;
        targetContract(address(handler));
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    /// forge-config: invariant.runs = 16
    /// forge-config: invariant.depth = 16
    function invariant_callsStayWithinDepth() public view {
        assertLe(handler.calls(), DEPTH, "more calls in one run than invariant.depth");
    }

    /// @dev Runs once at the end of each run, when every call of the run has been made.
    function afterInvariant() public view {
        assertGt(handler.calls(), 0, "the runner never called the handler");
    }
}

contract SelfTestTripwire {
    bool public tripped;

    function trip() external {
        tripped = true;
    }
}

/// @dev Proves the runner reads excludeContracts: with no explicit targets, every contract
///      deployed in setUp is fuzzed, so the tripwire would fire without the exclusion.
contract SoulmeshTestInvariantExcludeTest is SoulmeshTest {
    SelfTestTripwire internal tripwire;
    SelfTestCounter internal counter;

    function setUp() public {
        tripwire = new SelfTestTripwire();
        // Leaves the runner a contract it may call once the tripwire is excluded.
        counter = new SelfTestCounter();
        excludeContract(address(tripwire));
    }

    /// forge-config: invariant.runs = 16
    /// forge-config: invariant.depth = 16
    function invariant_excludedContractIsNeverCalled() public view {
        assertFalse(tripwire.tripped(), "excluded contract was called");
    }
}
