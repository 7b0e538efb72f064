// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

/// @title Vm
/// @notice The subset of Foundry's cheatcode interface that Soulmesh's Solidity tests use.
/// @dev Hardhat 3 runs Solidity tests on EDR, which answers Foundry cheatcodes at
///      0x7109709ECfa91a80626fF3989D68f67F5b1DD12D. Every declaration below is copied verbatim
///      from the cheatcode spec EDR ships, because a cheatcode is matched by its selector: a
///      changed parameter type silently becomes an unknown cheatcode. Add a cheatcode here only
///      after checking that EDR implements it (it rejects e.g. createWallet, deployCode,
///      broadcast, rememberKey and signDelegation as unsupported).
interface Vm {
    /// @notice A log captured between `recordLogs` and `getRecordedLogs`.
    struct Log {
        bytes32[] topics;
        bytes data;
        address emitter;
    }

    // ---------------------------------------------------------------- environment

    /// @notice Sets `block.timestamp`.
    function warp(uint256 newTimestamp) external;

    /// @notice Sets `block.number`.
    function roll(uint256 newHeight) external;

    /// @notice Sets `block.chainid`.
    function chainId(uint256 newChainId) external;

    /// @notice Reads `block.timestamp` through a call, which the optimizer cannot reuse from before a
    ///         `warp` the way it may reuse the opcode's value (it treats it as constant within a call).
    function getBlockTimestamp() external view returns (uint256 timestamp);

    /// @notice Reads `block.number`; see `getBlockTimestamp` for why not the opcode.
    function getBlockNumber() external view returns (uint256 height);

    /// @notice Reads an environment variable, or returns `defaultValue` when it is unset.
    function envOr(string calldata name, uint256 defaultValue) external view returns (uint256 value);

    /// @notice Reads an environment variable, or returns `defaultValue` when it is unset.
    function envOr(string calldata name, bool defaultValue) external view returns (bool value);

    // ---------------------------------------------------------------- accounts and state

    /// @notice Makes the next call come from `msgSender`.
    function prank(address msgSender) external;

    /// @notice Makes the next call come from `msgSender` with `tx.origin` set to `txOrigin`.
    function prank(address msgSender, address txOrigin) external;

    /// @notice Makes every call until `stopPrank` come from `msgSender`.
    function startPrank(address msgSender) external;

    /// @notice Makes every call until `stopPrank` come from `msgSender` with `tx.origin` set to `txOrigin`.
    function startPrank(address msgSender, address txOrigin) external;

    /// @notice Ends a `startPrank`.
    function stopPrank() external;

    /// @notice Sets the ether balance of `account`.
    function deal(address account, uint256 newBalance) external;

    /// @notice Writes a raw storage slot of `target`.
    function store(address target, bytes32 slot, bytes32 value) external;

    /// @notice Reads a raw storage slot of `target`.
    function load(address target, bytes32 slot) external view returns (bytes32 data);

    /// @notice Replaces the runtime code of `target`.
    function etch(address target, bytes calldata newRuntimeBytecode) external;

    /// @notice Names `account` in traces and failure output.
    function label(address account, string calldata newLabel) external;

    /// @notice Takes a snapshot of the whole EVM state.
    function snapshotState() external returns (uint256 snapshotId);

    /// @notice Restores a snapshot, keeping it for later restores.
    function revertToState(uint256 snapshotId) external returns (bool success);

    /// @notice Restores a snapshot and deletes it.
    function revertToStateAndDelete(uint256 snapshotId) external returns (bool success);

    // ---------------------------------------------------------------- keys and signatures

    /// @notice The address of a secp256k1 private key.
    function addr(uint256 privateKey) external pure returns (address keyAddr);

    /// @notice Signs `digest` with `privateKey` (no prefix is added), returning an `ecrecover`-ready signature.
    function sign(uint256 privateKey, bytes32 digest) external pure returns (uint8 v, bytes32 r, bytes32 s);

    // ---------------------------------------------------------------- expectations

    /// @notice Expects the next call to revert, with any data.
    function expectRevert() external;

    /// @notice Expects the next call to revert with exactly this 4-byte data (an argument-less custom error).
    function expectRevert(bytes4 revertData) external;

    /// @notice Expects the next call to revert with exactly this data (an encoded error with its arguments).
    function expectRevert(bytes calldata revertData) external;

    /// @notice Expects the next call to revert with this error selector, whatever its arguments.
    function expectPartialRevert(bytes4 revertData) external;

    /// @notice Expects the event emitted next in the test to be emitted, in order, by the next call.
    /// @dev Checks every topic and the data; the emitter is not checked.
    function expectEmit() external;

    /// @notice Like `expectEmit()`, but compares only the chosen topics and data, and requires `emitter`.
    function expectEmit(bool checkTopic1, bool checkTopic2, bool checkTopic3, bool checkData, address emitter)
        external;

    /// @notice Expects the next call (or a call under it) to call `callee` with calldata starting with `data`.
    function expectCall(address callee, bytes calldata data) external;

    /// @notice Makes calls to `callee` whose calldata starts with `data` return `returnData`.
    function mockCall(address callee, bytes calldata data, bytes calldata returnData) external;

    /// @notice Removes every `mockCall`.
    function clearMockedCalls() external;

    /// @notice Starts capturing emitted logs.
    function recordLogs() external;

    /// @notice Returns the logs captured since `recordLogs` (or the last read) and clears them.
    function getRecordedLogs() external returns (Log[] memory logs);

    // ---------------------------------------------------------------- fuzzing

    /// @notice Discards the current fuzz input when `condition` is false.
    /// @dev Rejections count against `fuzz.maxTestRejects`; prefer `bound` for ranges.
    function assume(bool condition) external pure;

    // ---------------------------------------------------------------- formatting

    /// @notice Formats a value for a failure message.
    function toString(address value) external pure returns (string memory stringifiedValue);

    /// @notice Formats a value for a failure message.
    function toString(bytes calldata value) external pure returns (string memory stringifiedValue);

    /// @notice Formats a value for a failure message.
    function toString(bytes32 value) external pure returns (string memory stringifiedValue);

    /// @notice Formats a value for a failure message.
    function toString(bool value) external pure returns (string memory stringifiedValue);

    /// @notice Formats a value for a failure message.
    function toString(uint256 value) external pure returns (string memory stringifiedValue);

    /// @notice Formats a value for a failure message.
    function toString(int256 value) external pure returns (string memory stringifiedValue);
}
