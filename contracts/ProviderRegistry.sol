// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EnumerableSet} from "@openzeppelin/contracts/utils/structs/EnumerableSet.sol";
import {IProviderRegistry} from "./interfaces/IProviderRegistry.sol";

/**
 * @title ProviderRegistry
 * @notice Compute providers: their stake, libp2p identity and addresses, the models they serve and their
 * prices. Clients discover providers here; a provider with less than the minimum stake is inactive.
 * @dev Stake leaves only through unbonding: requested, then withdrawn after `unbondingDelay`, so that a
 * provider cannot pull its stake out from under a dispute.
 */
contract ProviderRegistry is ReentrancyGuardTransient, IProviderRegistry {
    using SafeERC20 for IERC20;
    using EnumerableSet for EnumerableSet.AddressSet;

    /// @notice Most multiaddrs a provider may announce.
    uint256 public constant MAX_MULTIADDRS = 16;
    /// @notice Most models a provider may announce.
    uint256 public constant MAX_MODELS = 32;
    /// @notice Longest peer id or multiaddr, in bytes.
    uint256 public constant MAX_ADDRESS_LENGTH = 256;

    /// @notice A provider's public record.
    struct Provider {
        string peerId;
        string[] multiaddrs;
        bytes32[] modelHashes;
        uint128 priceInputPerMillion;
        uint128 priceOutputPerMillion;
        uint256 stake;
        uint256 unbonding;
        uint64 unbondingAvailableAt;
        uint64 registeredAt;
    }

    IERC20 private immutable _stakeToken;
    uint256 private immutable _minStake;
    uint256 private immutable _unbondingDelay;
    /// @notice The longest unbonding delay: a year keeps every release date far inside uint64.
    uint256 public constant MAX_DELAY = 365 days;
    EnumerableSet.AddressSet private _addresses;
    mapping(address provider => Provider) private _providers;
    uint256 private _totalHeld;

    /// @notice Emitted when a provider registers.
    event ProviderRegistered(
        address indexed provider,
        string peerId,
        string[] multiaddrs,
        bytes32[] modelHashes,
        uint256 priceInputPerMillion,
        uint256 priceOutputPerMillion,
        uint256 stake
    );
    /// @notice Emitted when a provider changes its identity, addresses, models or prices.
    event ProviderUpdated(
        address indexed provider,
        string peerId,
        string[] multiaddrs,
        bytes32[] modelHashes,
        uint256 priceInputPerMillion,
        uint256 priceOutputPerMillion
    );
    /// @notice Emitted when a provider adds stake.
    event StakeAdded(address indexed provider, uint256 amount, uint256 stake);
    /// @notice Emitted when a provider starts unbonding stake.
    event UnbondRequested(address indexed provider, uint256 amount, uint256 stake, uint256 availableAt);
    /// @notice Emitted when a provider withdraws unbonded stake.
    event StakeWithdrawn(address indexed provider, address indexed to, uint256 amount);

    /// @notice The caller is already registered.
    error Provider__AlreadyRegistered(address provider);
    /// @notice The caller is not registered.
    error Provider__NotRegistered(address provider);
    /// @notice Registration needs at least the minimum stake.
    error Provider__StakeBelowMinimum(uint256 stake, uint256 minStake);
    /// @notice A provider must announce a peer id of at most MAX_ADDRESS_LENGTH bytes.
    error Provider__InvalidPeerId();
    /// @notice A provider must announce between 1 and MAX_MULTIADDRS addresses, none empty or too long.
    error Provider__InvalidMultiaddrs();
    /// @notice A provider must announce between 1 and MAX_MODELS model hashes, none zero.
    error Provider__InvalidModels();
    /// @notice The amount must be positive.
    error Provider__ZeroAmount();
    /// @notice The provider has less stake than it asked to unbond.
    error Provider__InsufficientStake(uint256 stake, uint256 requested);
    /// @notice Nothing is unbonding.
    error Provider__NothingUnbonding();
    /// @notice Unbonded stake can be withdrawn only from `availableAt`.
    error Provider__UnbondingNotReady(uint256 availableAt);
    /// @notice The recipient cannot be the zero address.
    error Provider__ZeroAddress();
    /// @notice The unbonding delay is above MAX_DELAY.
    error Provider__DelayTooLong(uint256 delay, uint256 maxDelay);

    /// @param stakeToken_ The token stakes are held in.
    /// @param minStake_ The stake a provider needs to be active.
    /// @param unbondingDelay_ Seconds between an unbond request and the stake's release.
    constructor(IERC20 stakeToken_, uint256 minStake_, uint256 unbondingDelay_) {
        if (unbondingDelay_ > MAX_DELAY) revert Provider__DelayTooLong(unbondingDelay_, MAX_DELAY);
        _stakeToken = stakeToken_;
        _minStake = minStake_;
        _unbondingDelay = unbondingDelay_;
    }

    /**
     * @notice Registers the caller as a provider and pulls `stake` from it (approve this contract first).
     * @param peerId The provider's libp2p peer id.
     * @param multiaddrs The multiaddrs its node listens on.
     * @param modelHashes SHA-256 of each model file it serves.
     * @param priceInputPerMillion Price per million input tokens.
     * @param priceOutputPerMillion Price per million output tokens.
     * @param stake The stake to lock; at least `minStake()`.
     */
    function register(
        string calldata peerId,
        string[] calldata multiaddrs,
        bytes32[] calldata modelHashes,
        uint128 priceInputPerMillion,
        uint128 priceOutputPerMillion,
        uint256 stake
    ) external nonReentrant {
        if (_addresses.contains(msg.sender)) revert Provider__AlreadyRegistered(msg.sender);
        if (stake < _minStake) revert Provider__StakeBelowMinimum(stake, _minStake);
        Provider storage p = _providers[msg.sender];
        _setRecord(p, peerId, multiaddrs, modelHashes, priceInputPerMillion, priceOutputPerMillion);
        p.stake = stake;
        p.registeredAt = uint64(block.timestamp);
        _addresses.add(msg.sender);
        _totalHeld += stake;
        emit ProviderRegistered(
            msg.sender, peerId, multiaddrs, modelHashes, priceInputPerMillion, priceOutputPerMillion, stake
        );
        _stakeToken.safeTransferFrom(msg.sender, address(this), stake);
    }

    /**
     * @notice Replaces the caller's peer id, addresses, models and prices.
     * @param peerId The provider's libp2p peer id.
     * @param multiaddrs The multiaddrs its node listens on.
     * @param modelHashes SHA-256 of each model file it serves.
     * @param priceInputPerMillion Price per million input tokens.
     * @param priceOutputPerMillion Price per million output tokens.
     */
    function update(
        string calldata peerId,
        string[] calldata multiaddrs,
        bytes32[] calldata modelHashes,
        uint128 priceInputPerMillion,
        uint128 priceOutputPerMillion
    ) external {
        Provider storage p = _registered(msg.sender);
        _setRecord(p, peerId, multiaddrs, modelHashes, priceInputPerMillion, priceOutputPerMillion);
        emit ProviderUpdated(msg.sender, peerId, multiaddrs, modelHashes, priceInputPerMillion, priceOutputPerMillion);
    }

    /**
     * @notice Adds `amount` to the caller's stake (approve this contract first).
     * @param amount The amount to add.
     */
    function addStake(uint256 amount) external nonReentrant {
        if (amount == 0) revert Provider__ZeroAmount();
        Provider storage p = _registered(msg.sender);
        p.stake += amount;
        _totalHeld += amount;
        emit StakeAdded(msg.sender, amount, p.stake);
        _stakeToken.safeTransferFrom(msg.sender, address(this), amount);
    }

    /**
     * @notice Starts unbonding `amount` of the caller's stake. It can be withdrawn `unbondingDelay()` seconds
     * from now; stake already unbonding waits for the new date too. Below the minimum stake the provider is
     * inactive.
     * @param amount The amount to unbond.
     * @return availableAt When the unbonding stake can be withdrawn.
     */
    function requestUnbond(uint256 amount) external returns (uint256 availableAt) {
        if (amount == 0) revert Provider__ZeroAmount();
        Provider storage p = _registered(msg.sender);
        if (amount > p.stake) revert Provider__InsufficientStake(p.stake, amount);
        availableAt = block.timestamp + _unbondingDelay;
        p.stake -= amount;
        p.unbonding += amount;
        p.unbondingAvailableAt = uint64(availableAt);
        emit UnbondRequested(msg.sender, amount, p.stake, availableAt);
    }

    /**
     * @notice Sends the caller's unbonded stake to `to`, once the unbonding delay has passed.
     * @param to The recipient.
     */
    function withdrawUnbonded(address to) external nonReentrant {
        if (to == address(0)) revert Provider__ZeroAddress();
        Provider storage p = _registered(msg.sender);
        uint256 amount = p.unbonding;
        if (amount == 0) revert Provider__NothingUnbonding();
        if (block.timestamp < p.unbondingAvailableAt) revert Provider__UnbondingNotReady(p.unbondingAvailableAt);
        p.unbonding = 0;
        p.unbondingAvailableAt = 0;
        _totalHeld -= amount;
        emit StakeWithdrawn(msg.sender, to, amount);
        _stakeToken.safeTransfer(to, amount);
    }

    /// @notice A provider's record.
    /// @param provider The provider's address.
    function providerOf(address provider) external view returns (Provider memory) {
        if (!_addresses.contains(provider)) revert Provider__NotRegistered(provider);
        return _providers[provider];
    }

    /// @inheritdoc IProviderRegistry
    function isActive(address provider) public view returns (bool) {
        return _addresses.contains(provider) && _providers[provider].stake >= _minStake;
    }

    /// @notice The number of providers ever registered.
    function providerCount() external view returns (uint256) {
        return _addresses.length();
    }

    /**
     * @notice A page of registered provider addresses, in registration order.
     * @param offset The index of the first address.
     * @param limit The most addresses to return.
     */
    function providers(uint256 offset, uint256 limit) external view returns (address[] memory page) {
        uint256 total = _addresses.length();
        if (offset >= total) return new address[](0);
        // Compared as `limit > total - offset` so that a huge limit cannot overflow.
        uint256 end = limit > total - offset ? total : offset + limit;
        page = new address[](end - offset);
        for (uint256 i = offset; i < end; ++i) {
            page[i - offset] = _addresses.at(i);
        }
    }

    /// @notice Stake and unbonding stake held for all providers: always equal to this contract's balance
    /// of the stake token, short of tokens sent to it directly.
    function totalHeld() external view returns (uint256) {
        return _totalHeld;
    }

    /// @notice The token stakes are held in.
    function stakeToken() external view returns (IERC20) {
        return _stakeToken;
    }

    /// @notice The stake a provider needs to be active.
    function minStake() external view returns (uint256) {
        return _minStake;
    }

    /// @notice Seconds between an unbond request and the stake's release.
    function unbondingDelay() external view returns (uint256) {
        return _unbondingDelay;
    }

    function _registered(address provider) private view returns (Provider storage) {
        if (!_addresses.contains(provider)) revert Provider__NotRegistered(provider);
        return _providers[provider];
    }

    function _setRecord(
        Provider storage p,
        string calldata peerId,
        string[] calldata multiaddrs,
        bytes32[] calldata modelHashes,
        uint128 priceInputPerMillion,
        uint128 priceOutputPerMillion
    ) private {
        uint256 peerIdLength = bytes(peerId).length;
        if (peerIdLength == 0 || peerIdLength > MAX_ADDRESS_LENGTH) revert Provider__InvalidPeerId();
        if (multiaddrs.length == 0 || multiaddrs.length > MAX_MULTIADDRS) revert Provider__InvalidMultiaddrs();
        for (uint256 i; i < multiaddrs.length; ++i) {
            uint256 len = bytes(multiaddrs[i]).length;
            if (len == 0 || len > MAX_ADDRESS_LENGTH) revert Provider__InvalidMultiaddrs();
        }
        if (modelHashes.length == 0 || modelHashes.length > MAX_MODELS) revert Provider__InvalidModels();
        for (uint256 i; i < modelHashes.length; ++i) {
            if (modelHashes[i] == bytes32(0)) revert Provider__InvalidModels();
        }
        p.peerId = peerId;
        p.multiaddrs = multiaddrs;
        p.modelHashes = modelHashes;
        p.priceInputPerMillion = priceInputPerMillion;
        p.priceOutputPerMillion = priceOutputPerMillion;
    }
}
