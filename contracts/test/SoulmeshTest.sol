// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {Vm} from "./Vm.sol";

/// @title SoulmeshTest
/// @notice Base contract for Soulmesh's Solidity tests, run by `hardhat test solidity`.
/// @dev A small stand-in for forge-std's `Test`, which cannot be installed here (it is only
///      published on GitHub; the npm package of that name is not the real one). Names and
///      semantics follow forge-std so that tests read the same and could move to it unchanged.
///      Assertions revert with `Error(string)` instead of setting a failure flag, so a failing
///      assertion stops the test at the line that failed.
abstract contract SoulmeshTest {
    /// @notice The cheatcode handler, at the address Foundry and EDR both use: `address(uint160(uint256(keccak256("hevm cheat code"))))`.
    Vm internal constant vm = Vm(0x7109709ECfa91a80626fF3989D68f67F5b1DD12D);

    /// @notice A contract and the functions of it the invariant runner may call.
    /// @dev Same layout as forge-std's `StdInvariant.FuzzSelector`: the runner ABI-decodes it.
    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    uint256 private constant UINT256_MAX = type(uint256).max;

    address[] private _targetedContracts;
    address[] private _targetedSenders;
    FuzzSelector[] private _targetedSelectors;
    address[] private _excludedContracts;
    address[] private _excludedSenders;
    FuzzSelector[] private _excludedSelectors;

    // ================================================================ assertions

    /// @notice Fails unless `condition` is true.
    function assertTrue(bool condition) internal pure {
        assertTrue(condition, "");
    }

    /// @notice Fails with `err` unless `condition` is true.
    function assertTrue(bool condition, string memory err) internal pure {
        if (!condition) _fail(err, "expected true, got false");
    }

    /// @notice Fails unless `condition` is false.
    function assertFalse(bool condition) internal pure {
        assertFalse(condition, "");
    }

    /// @notice Fails with `err` unless `condition` is false.
    function assertFalse(bool condition, string memory err) internal pure {
        if (condition) _fail(err, "expected false, got true");
    }

    /// @notice Fails unless `left == right`.
    function assertEq(uint256 left, uint256 right) internal pure {
        assertEq(left, right, "");
    }

    /// @notice Fails with `err` unless `left == right`.
    function assertEq(uint256 left, uint256 right, string memory err) internal pure {
        if (left != right) _fail(err, vm.toString(left), " != ", vm.toString(right));
    }

    /// @notice Fails unless `left == right`.
    function assertEq(int256 left, int256 right) internal pure {
        assertEq(left, right, "");
    }

    /// @notice Fails with `err` unless `left == right`.
    function assertEq(int256 left, int256 right, string memory err) internal pure {
        if (left != right) _fail(err, vm.toString(left), " != ", vm.toString(right));
    }

    /// @notice Fails unless `left == right`.
    function assertEq(address left, address right) internal pure {
        assertEq(left, right, "");
    }

    /// @notice Fails with `err` unless `left == right`.
    function assertEq(address left, address right, string memory err) internal pure {
        if (left != right) _fail(err, vm.toString(left), " != ", vm.toString(right));
    }

    /// @notice Fails unless `left == right`.
    function assertEq(bytes32 left, bytes32 right) internal pure {
        assertEq(left, right, "");
    }

    /// @notice Fails with `err` unless `left == right`.
    function assertEq(bytes32 left, bytes32 right, string memory err) internal pure {
        if (left != right) _fail(err, vm.toString(left), " != ", vm.toString(right));
    }

    /// @notice Fails unless `left == right`.
    function assertEq(bool left, bool right) internal pure {
        assertEq(left, right, "");
    }

    /// @notice Fails with `err` unless `left == right`.
    function assertEq(bool left, bool right, string memory err) internal pure {
        if (left != right) _fail(err, vm.toString(left), " != ", vm.toString(right));
    }

    /// @notice Fails unless `left` and `right` hold the same characters.
    function assertEq(string memory left, string memory right) internal pure {
        assertEq(left, right, "");
    }

    /// @notice Fails with `err` unless `left` and `right` hold the same characters.
    /// @dev The values are quoted in the message so that an empty string or trailing space shows.
    function assertEq(string memory left, string memory right, string memory err) internal pure {
        if (keccak256(bytes(left)) != keccak256(bytes(right))) {
            _fail(err, string.concat('"', left, '"'), " != ", string.concat('"', right, '"'));
        }
    }

    /// @notice Fails unless `left` and `right` hold the same bytes.
    function assertEq(bytes memory left, bytes memory right) internal pure {
        assertEq(left, right, "");
    }

    /// @notice Fails with `err` unless `left` and `right` hold the same bytes.
    function assertEq(bytes memory left, bytes memory right, string memory err) internal pure {
        if (keccak256(left) != keccak256(right)) _fail(err, vm.toString(left), " != ", vm.toString(right));
    }

    /// @notice Fails unless `left > right`.
    function assertGt(uint256 left, uint256 right) internal pure {
        assertGt(left, right, "");
    }

    /// @notice Fails with `err` unless `left > right`.
    function assertGt(uint256 left, uint256 right, string memory err) internal pure {
        if (left <= right) _fail(err, vm.toString(left), " <= ", vm.toString(right));
    }

    /// @notice Fails unless `left > right`.
    function assertGt(int256 left, int256 right) internal pure {
        assertGt(left, right, "");
    }

    /// @notice Fails with `err` unless `left > right`.
    function assertGt(int256 left, int256 right, string memory err) internal pure {
        if (left <= right) _fail(err, vm.toString(left), " <= ", vm.toString(right));
    }

    /// @notice Fails unless `left >= right`.
    function assertGe(uint256 left, uint256 right) internal pure {
        assertGe(left, right, "");
    }

    /// @notice Fails with `err` unless `left >= right`.
    function assertGe(uint256 left, uint256 right, string memory err) internal pure {
        if (left < right) _fail(err, vm.toString(left), " < ", vm.toString(right));
    }

    /// @notice Fails unless `left >= right`.
    function assertGe(int256 left, int256 right) internal pure {
        assertGe(left, right, "");
    }

    /// @notice Fails with `err` unless `left >= right`.
    function assertGe(int256 left, int256 right, string memory err) internal pure {
        if (left < right) _fail(err, vm.toString(left), " < ", vm.toString(right));
    }

    /// @notice Fails unless `left < right`.
    function assertLt(uint256 left, uint256 right) internal pure {
        assertLt(left, right, "");
    }

    /// @notice Fails with `err` unless `left < right`.
    function assertLt(uint256 left, uint256 right, string memory err) internal pure {
        if (left >= right) _fail(err, vm.toString(left), " >= ", vm.toString(right));
    }

    /// @notice Fails unless `left < right`.
    function assertLt(int256 left, int256 right) internal pure {
        assertLt(left, right, "");
    }

    /// @notice Fails with `err` unless `left < right`.
    function assertLt(int256 left, int256 right, string memory err) internal pure {
        if (left >= right) _fail(err, vm.toString(left), " >= ", vm.toString(right));
    }

    /// @notice Fails unless `left <= right`.
    function assertLe(uint256 left, uint256 right) internal pure {
        assertLe(left, right, "");
    }

    /// @notice Fails with `err` unless `left <= right`.
    function assertLe(uint256 left, uint256 right, string memory err) internal pure {
        if (left > right) _fail(err, vm.toString(left), " > ", vm.toString(right));
    }

    /// @notice Fails unless `left <= right`.
    function assertLe(int256 left, int256 right) internal pure {
        assertLe(left, right, "");
    }

    /// @notice Fails with `err` unless `left <= right`.
    function assertLe(int256 left, int256 right, string memory err) internal pure {
        if (left > right) _fail(err, vm.toString(left), " > ", vm.toString(right));
    }

    /// @dev Message shape: "<err or 'assertion failed'>: <left><op><right>", e.g.
    ///      "assertion failed: 1 != 2", where <op> names the relation that held instead.
    function _fail(string memory err, string memory left, string memory op, string memory right) private pure {
        _fail(err, string.concat(left, op, right));
    }

    function _fail(string memory err, string memory detail) private pure {
        revert(string.concat(bytes(err).length == 0 ? "assertion failed" : err, ": ", detail));
    }

    // ================================================================ fuzzing helpers

    /// @notice Maps any `x` onto the inclusive range [`min`, `max`], as forge-std's `bound` does.
    /// @dev Prefer this to `vm.assume(min <= x && x <= max)`, which throws away most inputs and
    ///      can exhaust `fuzz.maxTestRejects`. A value already in range is returned unchanged, so
    ///      the fuzzer's dictionary values (boundaries, values seen in storage) survive; 0..3 map
    ///      to min..min+3 and UINT256_MAX-3..UINT256_MAX to max-3..max, so both ends of the range
    ///      are hit; everything else wraps around the range by its distance from it.
    /// @param x The fuzzer's input.
    /// @param min The smallest allowed result.
    /// @param max The largest allowed result; must be at least `min`.
    /// @return result A value in [`min`, `max`].
    function bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256 result) {
        require(min <= max, "bound(uint256,uint256,uint256): max is less than min");

        if (x >= min && x <= max) return x;

        // Cannot overflow: [0, UINT256_MAX] contains every x, so it returned above.
        uint256 size = max - min + 1;

        if (x <= 3 && size > x) return min + x;
        if (x >= UINT256_MAX - 3 && size > UINT256_MAX - x) return max - (UINT256_MAX - x);

        if (x > max) {
            uint256 rem = (x - max) % size;
            if (rem == 0) return max;
            result = min + rem - 1;
        } else {
            uint256 rem = (min - x) % size;
            if (rem == 0) return min;
            result = max - rem + 1;
        }
    }

    // ================================================================ accounts

    /// @notice A deterministic address for `name`, labelled with it in traces.
    /// @param name What the address stands for, e.g. "alice" or "provider".
    /// @return addr The address of the private key `uint256(keccak256(name))`.
    function makeAddr(string memory name) internal returns (address addr) {
        (addr,) = makeAddrAndKey(name);
    }

    /// @notice A deterministic address and its private key for `name`, labelled with it in traces.
    /// @dev Same derivation as forge-std, so the same name gives the same address in both. The key
    ///      is a hash, not a secret: use it only for signing in tests.
    /// @param name What the account stands for, e.g. "alice" or "provider".
    /// @return addr The account's address.
    /// @return privateKey Its secp256k1 private key, for `vm.sign`.
    function makeAddrAndKey(string memory name) internal returns (address addr, uint256 privateKey) {
        privateKey = uint256(keccak256(abi.encodePacked(name)));
        addr = vm.addr(privateKey);
        vm.label(addr, name);
    }

    // ================================================================ invariant targets

    /// @notice Restricts invariant fuzzing to the contracts added here (all contracts deployed in
    ///         `setUp` are targets while none is added).
    function targetContract(address target) internal {
        _targetedContracts.push(target);
    }

    /// @notice Restricts invariant calls to the senders added here (random senders while none is added).
    function targetSender(address sender) internal {
        _targetedSenders.push(sender);
    }

    /// @notice Restricts the calls on `selector.addr` to `selector.selectors`.
    /// @dev Pair it with `targetContract(selector.addr)`: on its own it only narrows the calls on
    ///      that one contract, and every other contract deployed in `setUp` stays a target.
    function targetSelector(FuzzSelector memory selector) internal {
        _targetedSelectors.push(selector);
    }

    /// @notice Keeps invariant fuzzing from calling `target`.
    function excludeContract(address target) internal {
        _excludedContracts.push(target);
    }

    /// @notice Keeps invariant fuzzing from calling as `sender`, even if it was added with `targetSender`.
    function excludeSender(address sender) internal {
        _excludedSenders.push(sender);
    }

    /// @notice Keeps invariant fuzzing from calling `selector.selectors` on `selector.addr`.
    function excludeSelector(FuzzSelector memory selector) internal {
        _excludedSelectors.push(selector);
    }

    /// @notice Read by the invariant runner; see `targetContract`.
    function targetContracts() public view returns (address[] memory) {
        return _targetedContracts;
    }

    /// @notice Read by the invariant runner; see `targetSender`.
    function targetSenders() public view returns (address[] memory) {
        return _targetedSenders;
    }

    /// @notice Read by the invariant runner; see `targetSelector`.
    function targetSelectors() public view returns (FuzzSelector[] memory) {
        return _targetedSelectors;
    }

    /// @notice Read by the invariant runner; see `excludeContract`.
    function excludeContracts() public view returns (address[] memory) {
        return _excludedContracts;
    }

    /// @notice Read by the invariant runner; see `excludeSender`.
    function excludeSenders() public view returns (address[] memory) {
        return _excludedSenders;
    }

    /// @notice Read by the invariant runner; see `excludeSelector`.
    function excludeSelectors() public view returns (FuzzSelector[] memory) {
        return _excludedSelectors;
    }
}
