// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

/// @title IAgentRegistry
/// @notice What the escrow reads from the agent registry.
interface IAgentRegistry {
    /// @notice The persona an agent was minted from.
    /// @dev Reverts with `Agent__UnknownAgent` for an id that was never minted.
    function personaOf(uint256 agentId) external view returns (uint256);
}
