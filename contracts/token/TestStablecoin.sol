// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/**
 * @title TestStablecoin
 * @notice The devnet's payment token: 6 decimals like the USD stablecoins users pay with on real chains,
 * with EIP-2612 permit so that a deposit takes one transaction. Only its owner mints.
 */
contract TestStablecoin is ERC20, ERC20Permit, Ownable {
    /// @param initialOwner The account allowed to mint (the devnet deployer).
    constructor(address initialOwner)
        ERC20("Soulmesh Test USD", "tUSD")
        ERC20Permit("Soulmesh Test USD")
        Ownable(initialOwner)
    {}

    /// @inheritdoc ERC20
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Mints `amount` to `to`. Only the owner may mint.
    /// @param to The recipient.
    /// @param amount The amount, in units of 10^-6.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
