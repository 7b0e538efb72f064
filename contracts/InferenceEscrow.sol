// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable, Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IAgentRegistry} from "./interfaces/IAgentRegistry.sol";
import {IPersonaRegistry} from "./interfaces/IPersonaRegistry.sol";
import {IProviderRegistry} from "./interfaces/IProviderRegistry.sol";
import {Scheduled} from "./libraries/Scheduled.sol";

/**
 * @title InferenceEscrow
 * @notice Holds what users deposit to pay for inference and pays providers, creators and the protocol
 * from it, between parties that do not trust each other.
 *
 * Money flows in three stages. A payer's free deposit is its own; it leaves only `withdrawalDelay` after a
 * request. The payer commits part of it to a provider's lane (payer, provider): from then on only that
 * provider's vouchers draw on the lane, and only that provider (or a settler it authorised) settles them.
 * A lane's remainder returns to the free deposit only `withdrawalDelay` after the payer asks for it. A payer
 * signs one EIP-712 voucher per turn with the cumulative token totals of a session and every rate that
 * prices it (provider prices, royalty and fee); the provider settles the latest voucher of each session and
 * is paid the difference since the last one settled. Everyone paid withdraws their earnings (pull payments).
 *
 * Sessions run on channels (payer, provider, agent), numbered strictly increasing; a channel keeps its
 * latest settled session, its token totals and what that session has cost so far in one storage slot.
 *
 * @dev Invariants (tested in InferenceEscrow.attacks.t.sol and InferenceEscrow.invariant.t.sol):
 * - I1, provider safety: a voucher that its provider checked against the lane (amount, pending release)
 *   and the rates in force when its session opened stays payable in full, by that provider alone, until
 *   it expires: only the provider settles its own vouchers, only its settlements draw on its lane, a lane
 *   release takes longer than any voucher lives, and royalty and fee rises take effect only after a delay
 *   longer than a voucher lives.
 * - I2, payer safety: a voucher takes at most what its payer signed: the signed prices, royalty and fee,
 *   applied to the signed totals; a session never costs more than the dearest voucher settled for it, so a
 *   rate changed mid-session cannot add to it.
 * - I3, no early exit: committed funds leave only through their provider's settlements or a release that
 *   waits `withdrawalDelay`, longer than any voucher's lifetime; lanes open only to registered providers.
 * - I4, solvency: the token balance equals free deposits + lanes + earnings (the token must not charge fees
 *   on transfer or rebase).
 */
contract InferenceEscrow is EIP712, Ownable2Step, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;
    using Scheduled for Scheduled.Value;

    /// @notice A payer's promise to pay for a session's usage so far, at the rates it names.
    struct Voucher {
        address payer;
        address provider;
        uint256 agentId;
        uint64 session;
        uint64 inputTokens;
        uint64 outputTokens;
        uint128 priceInputPerMillion;
        uint128 priceOutputPerMillion;
        /// @dev The royalty per million tokens the payer pays the persona's holder; at least the one in force.
        uint96 royaltyPerMillion;
        /// @dev The protocol fee in basis points; at least the one in force.
        uint16 feeBps;
        uint64 expiry;
    }

    /// @notice A voucher and its payer's signature (65-byte ECDSA, or whatever the payer's ERC-1271 wallet
    /// accepts).
    struct SignedVoucher {
        Voucher voucher;
        bytes signature;
    }

    /// @notice What settling a voucher pays.
    struct Settlement {
        uint256 personaId;
        address creator;
        uint64 inputTokens;
        uint64 outputTokens;
        uint256 providerAmount;
        uint256 royaltyAmount;
        uint256 feeAmount;
    }

    /// @dev A channel's latest settled session, its cumulative totals and what it has cost: one slot.
    struct Channel {
        uint64 session;
        uint48 inputTokens;
        uint48 outputTokens;
        uint96 paid;
    }

    /// @dev Funds a payer committed to one provider, and when a requested release completes: one slot.
    struct Lane {
        uint192 amount;
        uint64 releaseAt;
    }

    /// @dev A pending deposit withdrawal.
    struct Withdrawal {
        uint192 amount;
        uint64 availableAt;
    }

    /// @notice EIP-712 type hash of `Voucher`.
    bytes32 public constant VOUCHER_TYPEHASH = keccak256(
        "Voucher(address payer,address provider,uint256 agentId,uint64 session,uint64 inputTokens,uint64 outputTokens,uint128 priceInputPerMillion,uint128 priceOutputPerMillion,uint96 royaltyPerMillion,uint16 feeBps,uint64 expiry)"
    );
    /// @notice The highest protocol fee, in basis points (10%).
    uint256 public constant MAX_FEE_BPS = 1_000;
    /// @notice The longest withdrawal delay (voucher lifetimes are shorter still): a year keeps every date
    /// far inside uint64.
    uint256 public constant MAX_DELAY = 365 days;
    /// @notice The largest cumulative token total of one session that the escrow records.
    uint256 public constant MAX_SESSION_TOKENS = type(uint48).max;

    IERC20 private immutable _token;
    IAgentRegistry private immutable _agents;
    IPersonaRegistry private immutable _personas;
    IProviderRegistry private immutable _providers;
    uint256 private immutable _maxVoucherLifetime;
    uint256 private immutable _withdrawalDelay;
    uint256 private immutable _feeDelay;

    mapping(address account => uint256) private _deposits;
    mapping(address account => Withdrawal) private _withdrawals;
    mapping(address payer => mapping(address provider => Lane)) private _lanes;
    mapping(address account => uint256) private _earnings;
    mapping(bytes32 channelKey => Channel) private _channels;
    mapping(address provider => mapping(address settler => bool)) private _settlers;
    Scheduled.Value private _feeBps;
    address private _treasury;

    /// @notice Emitted when `from` deposits `amount` for `account`.
    event Deposited(address indexed account, address indexed from, uint256 amount);
    /// @notice Emitted when an account asks to withdraw part of its deposit.
    event WithdrawalRequested(address indexed account, uint256 amount, uint256 availableAt);
    /// @notice Emitted when an account cancels its pending withdrawal.
    event WithdrawalCancelled(address indexed account);
    /// @notice Emitted when a withdrawal is paid out.
    event WithdrawalCompleted(address indexed account, uint256 amount);
    /// @notice Emitted when a payer commits `amount` to its lane with `provider`, which then holds `lane`.
    event Committed(address indexed payer, address indexed provider, uint256 amount, uint256 lane);
    /// @notice Emitted when a payer asks for its lane with `provider` back; it can complete at `releaseAt`.
    event LaneReleaseRequested(address indexed payer, address indexed provider, uint256 amount, uint256 releaseAt);
    /// @notice Emitted when a pending lane release is cancelled (by the payer, or by committing again).
    event LaneReleaseCancelled(address indexed payer, address indexed provider);
    /// @notice Emitted when a lane's remainder returns to its payer's free deposit.
    event LaneReleased(address indexed payer, address indexed provider, uint256 amount);
    /// @notice Emitted when a lane's remainder is paid out to its payer once its release completed.
    event LaneWithdrawn(address indexed payer, address indexed provider, uint256 amount);
    /// @notice Emitted when a provider allows or disallows an account to settle its vouchers.
    event SettlerSet(address indexed provider, address indexed settler, bool allowed);
    /// @notice Emitted for every settled voucher, with the tokens and amounts it added to its session.
    event VoucherSettled(
        uint256 indexed personaId,
        address indexed provider,
        uint256 indexed agentId,
        address payer,
        uint64 session,
        uint256 inputTokens,
        uint256 outputTokens,
        uint256 providerAmount,
        uint256 royaltyAmount,
        uint256 feeAmount
    );
    /// @notice Emitted when `settleBatch` leaves out a voucher; `reason` is the error `settle` would revert with.
    event SettlementSkipped(
        address indexed provider, address indexed payer, uint256 indexed agentId, uint64 session, bytes reason
    );
    /// @notice Emitted when an account withdraws its earnings.
    event EarningsWithdrawn(address indexed account, address indexed to, uint256 amount);
    /// @notice Emitted when the owner schedules a protocol fee change.
    event ProtocolFeeScheduled(uint256 feeBps, uint256 effectiveAt);
    /// @notice Emitted when the owner changes the treasury that receives future fees.
    event TreasuryChanged(address indexed previousTreasury, address indexed newTreasury);

    /// @notice The amount must be positive.
    error Escrow__ZeroAmount();
    /// @notice The address cannot be zero.
    error Escrow__ZeroAddress();
    /// @notice The payer's free deposit does not cover the amount.
    error Escrow__InsufficientDeposit(address payer, uint256 required, uint256 available);
    /// @notice The payer's lane with the provider does not cover the voucher.
    error Escrow__InsufficientLane(address payer, address provider, uint256 required, uint256 available);
    /// @notice Lanes open only to providers registered and staked in the provider registry.
    error Escrow__NotAProvider(address provider);
    /// @notice There is no pending withdrawal.
    error Escrow__NoWithdrawalRequested(address account);
    /// @notice The withdrawal can be completed only from `availableAt`.
    error Escrow__WithdrawalNotReady(uint256 availableAt);
    /// @notice The payer has asked for no release of this lane.
    error Escrow__NoReleaseRequested(address payer, address provider);
    /// @notice The lane can be released only from `releaseAt`.
    error Escrow__ReleaseNotReady(uint256 releaseAt);
    /// @notice The lane holds nothing.
    error Escrow__EmptyLane(address payer, address provider);
    /// @notice There are no earnings to withdraw.
    error Escrow__NoEarnings(address account);
    /// @notice Only the voucher's provider, or a settler it authorised, may settle it.
    error Escrow__NotProviderOrSettler(address provider, address caller);
    /// @notice The voucher expired.
    error Escrow__VoucherExpired(uint256 expiry);
    /// @notice The voucher's expiry is further away than the longest voucher lifetime.
    error Escrow__ExpiryTooFar(uint256 expiry, uint256 latestAllowed);
    /// @notice The signature is not the payer's over this voucher, chain and contract.
    error Escrow__InvalidSignature(address payer);
    /// @notice The session was already settled up to these totals.
    error Escrow__AlreadySettled(bytes32 channelKey, uint64 session);
    /// @notice A total is below what was already settled for the session.
    error Escrow__CumulativeBelowSettled(
        bytes32 channelKey, uint64 settledInput, uint64 settledOutput, uint64 inputTokens, uint64 outputTokens
    );
    /// @notice A later session of the channel has settled; this one no longer can.
    error Escrow__SessionSuperseded(bytes32 channelKey, uint64 settledSession, uint64 session);
    /// @notice A voucher must carry some tokens.
    error Escrow__EmptyVoucher();
    /// @notice A voucher's token total is above MAX_SESSION_TOKENS, or its cost above what a channel records.
    error Escrow__VoucherTooLarge();
    /// @notice The voucher's royalty is below the persona's royalty in force.
    error Escrow__RoyaltyBelowRate(uint256 personaId, uint256 signed, uint256 inForce);
    /// @notice The voucher's fee is below the protocol fee in force.
    error Escrow__FeeBelowRate(uint256 signed, uint256 inForce);
    /// @notice The fee is above MAX_FEE_BPS.
    error Escrow__FeeTooHigh(uint256 feeBps);
    /// @notice A delay is not longer than the longest voucher lifetime.
    error Escrow__DelayTooShort(uint256 delay, uint256 maxVoucherLifetime);
    /// @notice The withdrawal delay, or the royalty delay fee changes follow, is above MAX_DELAY.
    error Escrow__DelayTooLong(uint256 delay, uint256 maxDelay);
    /// @notice A batch must hold at least one voucher.
    error Escrow__EmptyBatch();

    /**
     * @param token_ The payment token.
     * @param agents_ The agent registry.
     * @param personas_ The persona registry; its royalty delay must exceed `maxVoucherLifetime_`.
     * @param providers_ The provider registry: lanes open only to its active providers.
     * @param maxVoucherLifetime_ The furthest a voucher's expiry may be from the time it settles.
     * @param withdrawalDelay_ Seconds from a withdrawal or lane release request to its completion; above
     * `maxVoucherLifetime_`.
     * @param treasury_ Receives protocol fees.
     * @param owner_ May schedule the protocol fee and change the treasury.
     */
    constructor(
        IERC20 token_,
        IAgentRegistry agents_,
        IPersonaRegistry personas_,
        IProviderRegistry providers_,
        uint256 maxVoucherLifetime_,
        uint256 withdrawalDelay_,
        address treasury_,
        address owner_
    ) EIP712("Soulmesh InferenceEscrow", "2") Ownable(owner_) {
        if (address(token_) == address(0) || address(providers_) == address(0) || treasury_ == address(0)) {
            revert Escrow__ZeroAddress();
        }
        if (withdrawalDelay_ > MAX_DELAY) revert Escrow__DelayTooLong(withdrawalDelay_, MAX_DELAY);
        if (withdrawalDelay_ <= maxVoucherLifetime_) {
            revert Escrow__DelayTooShort(withdrawalDelay_, maxVoucherLifetime_);
        }
        uint256 royaltyDelay = personas_.royaltyDelay();
        if (royaltyDelay <= maxVoucherLifetime_) revert Escrow__DelayTooShort(royaltyDelay, maxVoucherLifetime_);
        if (royaltyDelay > MAX_DELAY) revert Escrow__DelayTooLong(royaltyDelay, MAX_DELAY);
        _token = token_;
        _agents = agents_;
        _personas = personas_;
        _providers = providers_;
        _maxVoucherLifetime = maxVoucherLifetime_;
        _withdrawalDelay = withdrawalDelay_;
        _feeDelay = royaltyDelay;
        _treasury = treasury_;
        emit TreasuryChanged(address(0), treasury_);
    }

    // ---------------------------------------------------------------- deposits

    /**
     * @notice Deposits `amount` for the caller (approve this contract first).
     * @param amount The amount to deposit.
     */
    function deposit(uint256 amount) external {
        depositFor(msg.sender, amount);
    }

    /**
     * @notice Deposits `amount` for `account`, paid by the caller (approve this contract first).
     * @param account The account credited.
     * @param amount The amount to deposit.
     */
    function depositFor(address account, uint256 amount) public nonReentrant {
        if (account == address(0)) revert Escrow__ZeroAddress();
        _pullDeposit(account, amount);
    }

    /**
     * @notice Deposits `amount` for the caller with an EIP-2612 permit, in one transaction.
     * @dev A permit that fails (for instance because someone front-ran it) is ignored: the transfer then
     * succeeds only if the allowance is already in place.
     * @param amount The amount to deposit; also the permit's value.
     * @param deadline The permit's deadline.
     * @param v The permit signature's v.
     * @param r The permit signature's r.
     * @param s The permit signature's s.
     */
    function depositWithPermit(uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s) external {
        _tryPermit(amount, deadline, v, r, s);
        depositFor(msg.sender, amount);
    }

    /**
     * @notice Asks to withdraw `amount` of the caller's free deposit. It stays in the escrow until the
     * withdrawal completes, `withdrawalDelay()` seconds from now. A new request replaces a pending one.
     * @param amount The amount to withdraw.
     * @return availableAt When the withdrawal can be completed.
     */
    function requestWithdrawal(uint256 amount) external returns (uint256 availableAt) {
        if (amount == 0) revert Escrow__ZeroAmount();
        uint256 available = _deposits[msg.sender];
        if (amount > available) revert Escrow__InsufficientDeposit(msg.sender, amount, available);
        availableAt = block.timestamp + _withdrawalDelay;
        _withdrawals[msg.sender] = Withdrawal(uint192(amount), uint64(availableAt));
        emit WithdrawalRequested(msg.sender, amount, availableAt);
    }

    /// @notice Cancels the caller's pending withdrawal.
    function cancelWithdrawal() external {
        if (_withdrawals[msg.sender].availableAt == 0) revert Escrow__NoWithdrawalRequested(msg.sender);
        delete _withdrawals[msg.sender];
        emit WithdrawalCancelled(msg.sender);
    }

    /**
     * @notice Completes the caller's pending withdrawal: pays out the amount requested, or what is left of
     * the free deposit if the payer committed part of it since.
     * @return amount The amount paid out.
     */
    function completeWithdrawal() external nonReentrant returns (uint256 amount) {
        Withdrawal memory w = _withdrawals[msg.sender];
        if (w.availableAt == 0) revert Escrow__NoWithdrawalRequested(msg.sender);
        if (block.timestamp < w.availableAt) revert Escrow__WithdrawalNotReady(w.availableAt);
        uint256 available = _deposits[msg.sender];
        amount = w.amount < available ? w.amount : available;
        delete _withdrawals[msg.sender];
        _deposits[msg.sender] = available - amount;
        emit WithdrawalCompleted(msg.sender, amount);
        if (amount > 0) _token.safeTransfer(msg.sender, amount);
    }

    // ------------------------------------------------------------------- lanes

    /**
     * @notice Commits `amount` of the caller's free deposit to its lane with `provider`, which only that
     * provider's vouchers draw on. Cancels a pending release of the lane.
     * @param provider An active provider of the provider registry.
     * @param amount The amount to commit.
     */
    function commit(address provider, uint256 amount) external {
        uint256 available = _deposits[msg.sender];
        if (amount > available) revert Escrow__InsufficientDeposit(msg.sender, amount, available);
        unchecked {
            _deposits[msg.sender] = available - amount;
        }
        _commit(msg.sender, provider, amount);
    }

    /**
     * @notice Deposits `amount` and commits it to the caller's lane with `provider`, in one transaction
     * (approve this contract first).
     * @param provider An active provider of the provider registry.
     * @param amount The amount to deposit and commit.
     */
    function depositAndCommit(address provider, uint256 amount) public nonReentrant {
        _pullDeposit(msg.sender, amount);
        _deposits[msg.sender] -= amount;
        _commit(msg.sender, provider, amount);
    }

    /**
     * @notice Deposits `amount` with an EIP-2612 permit and commits it to the caller's lane with
     * `provider`: a payer's first use of a provider in one transaction, without a prior approval.
     * @dev A failed permit is ignored, as in `depositWithPermit`.
     * @param provider An active provider of the provider registry.
     * @param amount The amount; also the permit's value.
     * @param deadline The permit's deadline.
     * @param v The permit signature's v.
     * @param r The permit signature's r.
     * @param s The permit signature's s.
     */
    function depositWithPermitAndCommit(address provider, uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
    {
        _tryPermit(amount, deadline, v, r, s);
        depositAndCommit(provider, amount);
    }

    /**
     * @notice Asks for the caller's lane with `provider` back. Its provider can settle vouchers against it
     * until the release completes, `withdrawalDelay()` seconds from now, by when every voucher it accepted
     * before the request has expired. A new request restarts the delay.
     * @param provider The lane's provider.
     * @return releaseAt When `completeRelease` can return the remainder.
     */
    function requestRelease(address provider) external returns (uint256 releaseAt) {
        Lane storage lane = _lanes[msg.sender][provider];
        uint256 amount = lane.amount;
        if (amount == 0) revert Escrow__EmptyLane(msg.sender, provider);
        releaseAt = block.timestamp + _withdrawalDelay;
        lane.releaseAt = uint64(releaseAt);
        emit LaneReleaseRequested(msg.sender, provider, amount, releaseAt);
    }

    /**
     * @notice Cancels the caller's pending release of its lane with `provider`.
     * @param provider The lane's provider.
     */
    function cancelRelease(address provider) external {
        Lane storage lane = _lanes[msg.sender][provider];
        if (lane.releaseAt == 0) revert Escrow__NoReleaseRequested(msg.sender, provider);
        lane.releaseAt = 0;
        emit LaneReleaseCancelled(msg.sender, provider);
    }

    /**
     * @notice Completes a requested release: what is left in the caller's lane with `provider` returns to
     * its free deposit.
     * @param provider The lane's provider.
     * @return amount The amount returned.
     */
    function completeRelease(address provider) external returns (uint256 amount) {
        amount = _takeReleasedLane(provider);
        _deposits[msg.sender] += amount;
        emit LaneReleased(msg.sender, provider, amount);
    }

    /**
     * @notice Completes a requested release and sends what is left in the caller's lane with `provider`
     * straight to the caller. The lane has waited `withdrawalDelay()` already, as a free deposit's withdrawal
     * would: leaving takes one delay, not a release and then a withdrawal.
     * @param provider The lane's provider.
     * @return amount The amount sent.
     */
    function completeReleaseAndWithdraw(address provider) external nonReentrant returns (uint256 amount) {
        amount = _takeReleasedLane(provider);
        emit LaneWithdrawn(msg.sender, provider, amount);
        if (amount > 0) _token.safeTransfer(msg.sender, amount);
    }

    // -------------------------------------------------------------- settlement

    /**
     * @notice Lets `settler` settle the caller's vouchers (a relayer), or stops it.
     * @param settler The account.
     * @param allowed Whether it may settle.
     */
    function setSettler(address settler, bool allowed) external {
        if (settler == address(0)) revert Escrow__ZeroAddress();
        _settlers[msg.sender][settler] = allowed;
        emit SettlerSet(msg.sender, settler, allowed);
    }

    /**
     * @notice Settles one voucher from its lane: pays its provider, the persona's holder and the protocol
     * what the session's new totals add to what the session has already cost.
     * @dev Only the voucher's provider or a settler it authorised may call it.
     * @param voucher The voucher.
     * @param signature The payer's signature over it.
     * @return settlement What it paid.
     */
    function settle(Voucher calldata voucher, bytes calldata signature)
        external
        nonReentrant
        returns (Settlement memory settlement)
    {
        bytes memory err = _settle(voucher, signature, _feeBps.at(block.timestamp), settlement);
        if (err.length != 0) _revertWith(err);
        _credit(voucher.provider, settlement.providerAmount);
        _creditFee(settlement.feeAmount);
    }

    /**
     * @notice Settles many vouchers in one transaction. A voucher that cannot settle (the chain moved on,
     * the lane ran short, a settler not authorised) is left out with a `SettlementSkipped` event carrying the
     * error a single `settle` would revert with; the others settle.
     * @param vouchers The vouchers and their signatures.
     * @return paid Total paid out of lanes.
     */
    function settleBatch(SignedVoucher[] calldata vouchers) external nonReentrant returns (uint256 paid) {
        uint256 count = vouchers.length;
        if (count == 0) revert Escrow__EmptyBatch();
        uint256 feeNow = _feeBps.at(block.timestamp);
        // One Settlement, reused: each voucher that settles overwrites every field.
        Settlement memory s;
        uint256 fees;
        // A batch usually holds one provider's vouchers: its share is summed over each run of consecutive
        // vouchers of one provider and credited once per run, as fees are once per batch, not once per voucher.
        address runProvider;
        uint256 runEarnings;
        for (uint256 i; i < count; ++i) {
            Voucher calldata v = vouchers[i].voucher;
            bytes memory err = _settle(v, vouchers[i].signature, feeNow, s);
            if (err.length != 0) {
                emit SettlementSkipped(v.provider, v.payer, v.agentId, v.session, err);
                continue;
            }
            address provider = v.provider;
            if (provider != runProvider) {
                _credit(runProvider, runEarnings);
                (runProvider, runEarnings) = (provider, 0);
            }
            // Each share is below 2^96 (a session's cost is capped there) and a batch holds far fewer than
            // 2^64 vouchers: these sums cannot overflow.
            unchecked {
                runEarnings += s.providerAmount;
                fees += s.feeAmount;
                paid += s.providerAmount + s.royaltyAmount + s.feeAmount;
            }
        }
        _credit(runProvider, runEarnings);
        _creditFee(fees);
    }

    /**
     * @notice Sends all of the caller's earnings (as provider, persona holder or treasury) to `to`.
     * @param to The recipient.
     * @return amount The amount sent.
     */
    function withdrawEarnings(address to) external nonReentrant returns (uint256 amount) {
        if (to == address(0)) revert Escrow__ZeroAddress();
        amount = _earnings[msg.sender];
        if (amount == 0) revert Escrow__NoEarnings(msg.sender);
        _earnings[msg.sender] = 0;
        emit EarningsWithdrawn(msg.sender, to, amount);
        _token.safeTransfer(to, amount);
    }

    // ------------------------------------------------------------------- owner

    /**
     * @notice Schedules a new protocol fee, effective after the same delay as royalty changes.
     * @param feeBps The fee in basis points of what the provider and creator are paid; at most MAX_FEE_BPS.
     * @return effectiveAt When it takes effect.
     */
    function scheduleProtocolFee(uint256 feeBps) external onlyOwner returns (uint256 effectiveAt) {
        if (feeBps > MAX_FEE_BPS) revert Escrow__FeeTooHigh(feeBps);
        effectiveAt = block.timestamp + _feeDelay;
        _feeBps.schedule(uint96(feeBps), uint64(effectiveAt));
        emit ProtocolFeeScheduled(feeBps, effectiveAt);
    }

    /**
     * @notice Sets the treasury that receives future protocol fees; fees already earned stay with the
     * previous treasury.
     * @param treasury_ The new treasury.
     */
    function setTreasury(address treasury_) external onlyOwner {
        if (treasury_ == address(0)) revert Escrow__ZeroAddress();
        emit TreasuryChanged(_treasury, treasury_);
        _treasury = treasury_;
    }

    // ------------------------------------------------------------------- views

    /**
     * @notice What settling `voucher` now would pay, checking everything `settle` checks but the signature
     * and the caller.
     * @param voucher The voucher.
     * @return settlement What it would pay.
     */
    function previewSettle(Voucher calldata voucher) external view returns (Settlement memory settlement) {
        (,, uint256 total, bytes memory err) = _price(voucher, _feeBps.at(block.timestamp), settlement);
        if (err.length == 0) {
            uint256 lane = _lanes[voucher.payer][voucher.provider].amount;
            if (total > lane) {
                err = abi.encodeWithSelector(
                    Escrow__InsufficientLane.selector, voucher.payer, voucher.provider, total, lane
                );
            }
        }
        if (err.length != 0) _revertWith(err);
    }

    /// @notice The EIP-712 digest a payer signs for `voucher` on this chain and contract.
    function hashVoucher(Voucher calldata voucher) external view returns (bytes32) {
        return _hashTypedDataV4(_structHash(voucher));
    }

    /// @notice Whether `signature` is the payer's over `voucher`, for this chain and contract.
    function isValidVoucherSignature(Voucher calldata voucher, bytes calldata signature) external view returns (bool) {
        return _isValidSignature(voucher.payer, _hashTypedDataV4(_structHash(voucher)), signature);
    }

    /// @notice The key of the channel between `payer`, `provider` and `agentId`.
    function channelKey(address payer, address provider, uint256 agentId) public pure returns (bytes32) {
        return keccak256(abi.encode(payer, provider, agentId));
    }

    /**
     * @notice The latest settled session of a channel, its cumulative totals and what it has cost.
     * @return session The session number (zero before the first settlement).
     * @return inputTokens Input tokens settled for that session.
     * @return outputTokens Output tokens settled for that session.
     * @return paid What that session has taken from the lane so far (provider, royalty and fee).
     */
    function settledOf(address payer, address provider, uint256 agentId)
        external
        view
        returns (uint64 session, uint64 inputTokens, uint64 outputTokens, uint256 paid)
    {
        Channel memory c = _channels[channelKey(payer, provider, agentId)];
        return (c.session, c.inputTokens, c.outputTokens, c.paid);
    }

    /// @notice An account's free deposit (not committed to any lane), pending withdrawal included.
    function depositOf(address account) external view returns (uint256) {
        return _deposits[account];
    }

    /**
     * @notice What `payer` has committed to `provider` and not yet been settled, and its pending release.
     * @return amount The lane's balance.
     * @return releaseAt When a requested release can complete (zero when none is pending).
     */
    function laneOf(address payer, address provider) external view returns (uint256 amount, uint256 releaseAt) {
        Lane memory lane = _lanes[payer][provider];
        return (lane.amount, lane.releaseAt);
    }

    /// @notice Whether `settler` may settle `provider`'s vouchers (a provider always may settle its own).
    function isSettler(address provider, address settler) external view returns (bool) {
        return settler == provider || _settlers[provider][settler];
    }

    /// @notice An account's pending withdrawal (zeros when none).
    function pendingWithdrawalOf(address account) external view returns (uint256 amount, uint256 availableAt) {
        Withdrawal memory w = _withdrawals[account];
        return (w.amount, w.availableAt);
    }

    /// @notice An account's earnings, not yet withdrawn.
    function earningsOf(address account) external view returns (uint256) {
        return _earnings[account];
    }

    /**
     * @notice The protocol fee schedule.
     * @return current The fee in force now, in basis points.
     * @return next The fee scheduled to replace it (equal to `current` when none is pending).
     * @return effectiveAt When `next` takes effect (zero when none is pending).
     */
    function protocolFee() external view returns (uint256 current, uint256 next, uint256 effectiveAt) {
        return _feeBps.state(block.timestamp);
    }

    /// @notice The treasury that receives protocol fees.
    function treasury() external view returns (address) {
        return _treasury;
    }

    /// @notice The payment token.
    function token() external view returns (IERC20) {
        return _token;
    }

    /// @notice The agent registry.
    function agentRegistry() external view returns (IAgentRegistry) {
        return _agents;
    }

    /// @notice The persona registry.
    function personaRegistry() external view returns (IPersonaRegistry) {
        return _personas;
    }

    /// @notice The provider registry whose active providers lanes may open to.
    function providerRegistry() external view returns (IProviderRegistry) {
        return _providers;
    }

    /// @notice The furthest a voucher's expiry may be from the time it settles, in seconds.
    function maxVoucherLifetime() external view returns (uint256) {
        return _maxVoucherLifetime;
    }

    /// @notice Seconds from a withdrawal or lane release request to its completion.
    function withdrawalDelay() external view returns (uint256) {
        return _withdrawalDelay;
    }

    /// @notice Seconds from a protocol fee change to its taking effect.
    function feeDelay() external view returns (uint256) {
        return _feeDelay;
    }

    // ---------------------------------------------------------------- internal

    function _pullDeposit(address account, uint256 amount) private {
        if (amount == 0) revert Escrow__ZeroAmount();
        _deposits[account] += amount;
        emit Deposited(account, msg.sender, amount);
        _token.safeTransferFrom(msg.sender, address(this), amount);
    }

    function _tryPermit(uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s) private {
        try IERC20Permit(address(_token)).permit(msg.sender, address(this), amount, deadline, v, r, s) {} catch {}
    }

    /// @dev Empties the caller's lane with `provider` once its requested release is due; returns what it held.
    function _takeReleasedLane(address provider) private returns (uint256 amount) {
        Lane memory lane = _lanes[msg.sender][provider];
        if (lane.releaseAt == 0) revert Escrow__NoReleaseRequested(msg.sender, provider);
        if (block.timestamp < lane.releaseAt) revert Escrow__ReleaseNotReady(lane.releaseAt);
        amount = lane.amount;
        delete _lanes[msg.sender][provider];
    }

    function _commit(address payer, address provider, uint256 amount) private {
        if (amount == 0) revert Escrow__ZeroAmount();
        if (!_providers.isActive(provider)) revert Escrow__NotAProvider(provider);
        Lane storage lane = _lanes[payer][provider];
        uint256 total = lane.amount + amount;
        lane.amount = uint192(total);
        if (lane.releaseAt != 0) {
            lane.releaseAt = 0;
            emit LaneReleaseCancelled(payer, provider);
        }
        emit Committed(payer, provider, amount, total);
    }

    /**
     * @dev Settles `v` into `s` or returns the error `settle` reverts with; on an error nothing was written.
     * Pays the creator's royalty; the provider's share and the fee are left to the caller, which credits
     * them once per batch (or per run of one provider's vouchers) rather than once per voucher.
     */
    function _settle(Voucher calldata v, bytes calldata signature, uint256 feeNow, Settlement memory s)
        private
        returns (bytes memory err)
    {
        address provider = v.provider;
        if (msg.sender != provider && !_settlers[provider][msg.sender]) {
            return abi.encodeWithSelector(Escrow__NotProviderOrSettler.selector, provider, msg.sender);
        }
        (bytes32 key, uint256 paid, uint256 total, bytes memory priceErr) = _price(v, feeNow, s);
        if (priceErr.length != 0) return priceErr;
        address payer = v.payer;
        // `_price` read (and so checked) every field of `v`: its calldata words are the struct's encoding.
        if (!_isValidSignature(payer, _hashTypedDataV4(_structHashOfChecked(v)), signature)) {
            return abi.encodeWithSelector(Escrow__InvalidSignature.selector, payer);
        }
        Lane storage lane = _lanes[payer][provider];
        uint256 available = lane.amount;
        if (total > available) {
            return abi.encodeWithSelector(Escrow__InsufficientLane.selector, payer, provider, total, available);
        }

        uint256 session = v.session;
        _channels[key] = Channel(uint64(session), uint48(v.inputTokens), uint48(v.outputTokens), uint96(paid));
        unchecked {
            lane.amount = uint192(available - total);
        }
        if (s.royaltyAmount != 0) _earnings[s.creator] += s.royaltyAmount;
        emit VoucherSettled(
            s.personaId,
            provider,
            v.agentId,
            payer,
            uint64(session),
            s.inputTokens,
            s.outputTokens,
            s.providerAmount,
            s.royaltyAmount,
            s.feeAmount
        );
    }

    /**
     * @dev Prices `v` against its channel into `s` and returns the channel's key, what its session will have
     * cost once `v` settles and what `v` adds to it, or the error `settle` reverts with. Each share is priced
     * on the cumulative totals at the voucher's own rates, minus what the settled totals priced at, so that a
     * session's cost does not depend on how often it settles; then the session's cost is held to the
     * voucher's own cumulative cost, taking any excess off the provider's share first, so a rate changed
     * mid-session cannot add to it. Fields of `v` are read in the order the checks need them: a field that
     * does not fit its type reverts only where a check first reads it.
     */
    function _price(Voucher calldata v, uint256 feeNow, Settlement memory s)
        private
        view
        returns (bytes32 key, uint256 paid, uint256 total, bytes memory err)
    {
        {
            uint256 expiry = v.expiry;
            if (block.timestamp > expiry) {
                return (key, 0, 0, abi.encodeWithSelector(Escrow__VoucherExpired.selector, expiry));
            }
            uint256 latest = block.timestamp + _maxVoucherLifetime;
            if (expiry > latest) {
                return (key, 0, 0, abi.encodeWithSelector(Escrow__ExpiryTooFar.selector, expiry, latest));
            }
        }
        uint256 inputTokens = v.inputTokens;
        if (inputTokens > MAX_SESSION_TOKENS || v.outputTokens > MAX_SESSION_TOKENS) {
            return (key, 0, 0, abi.encodeWithSelector(Escrow__VoucherTooLarge.selector));
        }
        uint256 outputTokens = v.outputTokens;
        uint256 feeBps = v.feeBps;
        if (feeBps < feeNow) return (key, 0, 0, abi.encodeWithSelector(Escrow__FeeBelowRate.selector, feeBps, feeNow));

        key = _channelKey(v.payer, v.provider, v.agentId);
        uint256 settledIn;
        uint256 settledOut;
        {
            Channel storage channel = _channels[key];
            uint256 settledSession = channel.session;
            uint256 session = v.session;
            if (session < settledSession) {
                return (
                    key,
                    0,
                    0,
                    abi.encodeWithSelector(Escrow__SessionSuperseded.selector, key, settledSession, session)
                );
            }
            if (session == settledSession) {
                (settledIn, settledOut) = (channel.inputTokens, channel.outputTokens);
                if (inputTokens < settledIn || outputTokens < settledOut) {
                    return (
                        key,
                        0,
                        0,
                        abi.encodeWithSelector(
                            Escrow__CumulativeBelowSettled.selector, key, settledIn, settledOut, inputTokens, outputTokens
                        )
                    );
                }
                if (inputTokens == settledIn && outputTokens == settledOut) {
                    return (key, 0, 0, abi.encodeWithSelector(Escrow__AlreadySettled.selector, key, session));
                }
                paid = channel.paid;
            } else if (inputTokens == 0 && outputTokens == 0) {
                return (key, 0, 0, abi.encodeWithSelector(Escrow__EmptyVoucher.selector));
            }
            // A new session starts from nothing settled and nothing paid.
        }

        {
            (uint256 personaId, address creator, uint256 royaltyInForce) = _royaltyTermsOf(v.agentId);
            (s.personaId, s.creator) = (personaId, creator);
            uint256 signedRoyalty = v.royaltyPerMillion;
            if (signedRoyalty < royaltyInForce) {
                return (
                    key,
                    0,
                    0,
                    abi.encodeWithSelector(Escrow__RoyaltyBelowRate.selector, personaId, signedRoyalty, royaltyInForce)
                );
            }
        }
        // Every bound below holds by a check above or by a field's type: tokens below 2^48 (checked), prices
        // below 2^128, royalty below 2^96, fee below 2^16, settled totals at most the voucher's (checked, or
        // zero for a new session), and each amount grows with the totals. No product or sum comes near 2^256
        // and no difference goes below zero, so the arithmetic needs no overflow checks.
        unchecked {
            s.inputTokens = uint64(inputTokens - settledIn);
            s.outputTokens = uint64(outputTokens - settledOut);
            (uint256 providerNow, uint256 royaltyNow, uint256 feeAmountNow) = _cost(v, inputTokens, outputTokens);
            (uint256 providerBefore, uint256 royaltyBefore, uint256 feeBefore) = _cost(v, settledIn, settledOut);
            uint256 providerAmount = providerNow - providerBefore;
            uint256 royaltyAmount = royaltyNow - royaltyBefore;
            uint256 feeAmount = feeAmountNow - feeBefore;

            uint256 cumulative = providerNow + royaltyNow + feeAmountNow;
            if (cumulative > type(uint96).max) {
                return (key, 0, 0, abi.encodeWithSelector(Escrow__VoucherTooLarge.selector));
            }
            uint256 room = cumulative > paid ? cumulative - paid : 0;
            total = providerAmount + royaltyAmount + feeAmount;
            if (total > room) {
                // Only a voucher at other rates than the session's earlier ones gets here.
                uint256 excess = total - room;
                uint256 cut = excess < providerAmount ? excess : providerAmount;
                (providerAmount, excess) = (providerAmount - cut, excess - cut);
                cut = excess < royaltyAmount ? excess : royaltyAmount;
                (royaltyAmount, excess) = (royaltyAmount - cut, excess - cut);
                feeAmount -= excess;
                total = room;
            }
            // At most max(cumulative, paid), both below 2^96.
            paid += total;
            (s.providerAmount, s.royaltyAmount, s.feeAmount) = (providerAmount, royaltyAmount, feeAmount);
        }
    }

    /// @dev What `inputTokens` and `outputTokens` cost at `v`'s rates. Unchecked: `_price` calls it only with
    /// totals it checked below 2^48, and prices are below 2^128, the royalty below 2^96, the fee below 2^16.
    function _cost(Voucher calldata v, uint256 inputTokens, uint256 outputTokens)
        private
        pure
        returns (uint256 providerAmount, uint256 royaltyAmount, uint256 feeAmount)
    {
        unchecked {
            providerAmount = (inputTokens * v.priceInputPerMillion + outputTokens * v.priceOutputPerMillion) / 1e6;
            royaltyAmount = ((inputTokens + outputTokens) * v.royaltyPerMillion) / 1e6;
            feeAmount = ((providerAmount + royaltyAmount) * v.feeBps) / 10_000;
        }
    }

    /**
     * @dev The agent's persona, its holder and the royalty in force: `_agents.personaOf(agentId)`, then
     * `_personas.royaltyOf(personaId)`, called as Solidity calls them (a revert is passed on as it is; an
     * answer too short, or a holder that is no address, reverts with no data) but in scratch memory, without
     * the memory each high-level call allocates and its decoding.
     */
    function _royaltyTermsOf(uint256 agentId)
        private
        view
        returns (uint256 personaId, address holder, uint256 royaltyPerMillion)
    {
        address agents = address(_agents);
        address personas = address(_personas);
        bytes4 personaOfSelector = IAgentRegistry.personaOf.selector;
        bytes4 royaltyOfSelector = IPersonaRegistry.royaltyOf.selector;
        assembly ("memory-safe") {
            // personaId = agents.personaOf(agentId): selector and argument in 0x00-0x23, answer in 0x00-0x1f.
            mstore(0x00, personaOfSelector)
            mstore(0x04, agentId)
            if iszero(staticcall(gas(), agents, 0x00, 0x24, 0x00, 0x20)) {
                let ptr := mload(0x40)
                returndatacopy(ptr, 0x00, returndatasize())
                revert(ptr, returndatasize())
            }
            if lt(returndatasize(), 0x20) { revert(0x00, 0x00) }
            personaId := mload(0x00)
            // (holder, royaltyPerMillion) = personas.royaltyOf(personaId), the same way; answer in 0x00-0x3f.
            mstore(0x00, royaltyOfSelector)
            mstore(0x04, personaId)
            if iszero(staticcall(gas(), personas, 0x00, 0x24, 0x00, 0x40)) {
                let ptr := mload(0x40)
                returndatacopy(ptr, 0x00, returndatasize())
                revert(ptr, returndatasize())
            }
            if lt(returndatasize(), 0x40) { revert(0x00, 0x00) }
            holder := mload(0x00)
            if shr(160, holder) { revert(0x00, 0x00) }
            royaltyPerMillion := mload(0x20)
        }
    }

    function _credit(address account, uint256 amount) private {
        if (amount != 0) _earnings[account] += amount;
    }

    function _creditFee(uint256 amount) private {
        if (amount != 0) _earnings[_treasury] += amount;
    }

    /// @dev `channelKey` without the memory it allocates: keccak256 of the three words abi.encode writes.
    function _channelKey(address payer, address provider, uint256 agentId) private pure returns (bytes32 key) {
        assembly ("memory-safe") {
            // Hashes abi.encode(payer, provider, agentId) written past the free memory pointer, left unmoved.
            let ptr := mload(0x40)
            mstore(ptr, payer)
            mstore(add(ptr, 0x20), provider)
            mstore(add(ptr, 0x40), agentId)
            key := keccak256(ptr, 0x60)
        }
    }

    function _structHash(Voucher calldata v) private pure returns (bytes32) {
        return keccak256(
            abi.encode(
                VOUCHER_TYPEHASH,
                v.payer,
                v.provider,
                v.agentId,
                v.session,
                v.inputTokens,
                v.outputTokens,
                v.priceInputPerMillion,
                v.priceOutputPerMillion,
                v.royaltyPerMillion,
                v.feeBps,
                v.expiry
            )
        );
    }

    /**
     * @dev `_structHash` for a voucher whose fields were all read (so checked to fit their types) already:
     * a calldata Voucher is static, so its 11 calldata words are then exactly what abi.encode writes for
     * them, and hashing them in place spares re-reading and re-checking each.
     */
    function _structHashOfChecked(Voucher calldata v) private pure returns (bytes32 hash) {
        bytes32 typeHash = VOUCHER_TYPEHASH;
        assembly ("memory-safe") {
            // keccak256(VOUCHER_TYPEHASH ‖ the voucher's 11 words), written past the free memory pointer.
            let ptr := mload(0x40)
            mstore(ptr, typeHash)
            calldatacopy(add(ptr, 0x20), v, 0x160)
            hash := keccak256(ptr, 0x180)
        }
    }

    /// @dev Tries ECDSA first so that an EOA payer costs no EXTCODESIZE; falls back to ERC-1271 for
    /// smart-contract wallets.
    function _isValidSignature(address signer, bytes32 digest, bytes calldata signature) private view returns (bool) {
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, signature);
        if (err == ECDSA.RecoverError.NoError && recovered == signer) return true;
        return signer.code.length != 0 && SignatureChecker.isValidERC1271SignatureNowCalldata(signer, digest, signature);
    }

    function _revertWith(bytes memory err) private pure {
        assembly ("memory-safe") {
            revert(add(err, 0x20), mload(err))
        }
    }
}
