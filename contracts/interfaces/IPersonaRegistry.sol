// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

/// @title IPersonaRegistry
/// @notice What the other Soulmesh contracts read from the persona registry.
interface IPersonaRegistry {
    /// @notice The delay before a royalty change takes effect, in seconds.
    function royaltyDelay() external view returns (uint256);

    /// @notice The persona's current holder (who is paid its royalties) and the royalty in force now.
    /// @dev Reverts with `Persona__UnknownPersona` for an id that was never minted.
    function royaltyOf(uint256 personaId) external view returns (address holder, uint256 royaltyPerMillion);

    /// @notice The persona's current holder (who is paid adoptions) and its adoption price.
    /// @dev Reverts with `Persona__UnknownPersona` for an id that was never minted.
    function adoptionTermsOf(uint256 personaId) external view returns (address holder, uint256 adoptionPrice);
}
