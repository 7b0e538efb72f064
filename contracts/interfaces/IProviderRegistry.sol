// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

/// @title IProviderRegistry
/// @notice What the escrow reads from the provider registry.
interface IProviderRegistry {
    /// @notice Whether `provider` is registered with at least the minimum stake.
    function isActive(address provider) external view returns (bool);
}
