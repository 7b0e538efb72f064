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
import {Scheduled} from "./libraries/Scheduled.sol";

/**
 * @title InferenceEscrow
 * @notice Holds what users deposit to pay for inference and pays providers, creators and the protocol
 * from it. A user signs one EIP-712 voucher per turn carrying the cumulative token totals of a session;
 * the provider settles the latest voucher of each session, in batches, and is paid only the difference
 * since the last voucher settled for that session. Everyone paid withdraws their earnings (pull payments).
 *
 * Sessions run on channels: a payer, a provider and an agent. A channel's sessions are numbered, strictly
 * increasing, and the channel keeps only its latest session's settled totals in one storage slot, so a
 * settlement rewrites a slot instead of creating one. Once a session has settled, vouchers of earlier
 * sessions of the channel are refused: the provider, who alone settles its vouchers, accepts only session
 * numbers above the last it saw on the channel and settles a channel's sessions in order.
 * @dev Invariants:
 * - a voucher pays at most what its payer signed: the provider exactly the prices signed, the persona's
 *   holder the royalty in force, the protocol its fee; royalty and fee changes are delayed beyond the
 *   longest voucher lifetime, so both were visible on chain when the voucher was signed;
 * - the token balance equals the sum of deposits and earnings (the token must not charge fees on transfer
 *   or rebase);
 * - deposits leave only `withdrawalDelay` after a request, by which time every voucher accepted before the
 *   request has expired.
 */
contract InferenceEscrow is EIP712, Ownable2Step, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;
    using Scheduled for Scheduled.Value;

    /// @notice A payer's promise to pay for a session's usage so far.
    struct Voucher {
        address payer;
        address provider;
        uint256 agentId;
        uint64 session;
        uint64 inputTokens;
        uint64 outputTokens;
        uint128 priceInputPerMillion;
        uint128 priceOutputPerMillion;
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

    /// @dev A channel's latest settled session and its cumulative totals: one slot.
    struct Channel {
        uint64 session;
        uint64 inputTokens;
        uint64 outputTokens;
    }

    /// @dev A pending deposit withdrawal.
    struct Withdrawal {
        uint192 amount;
        uint64 availableAt;
    }

    /// @notice EIP-712 type hash of `Voucher`.
    bytes32 public constant VOUCHER_TYPEHASH = keccak256(
        "Voucher(address payer,address provider,uint256 agentId,uint64 session,uint64 inputTokens,uint64 outputTokens,uint128 priceInputPerMillion,uint128 priceOutputPerMillion,uint64 expiry)"
    );
    /// @notice The highest protocol fee, in basis points (10%).
    uint256 public constant MAX_FEE_BPS = 1_000;
    /// @notice The longest withdrawal delay (voucher lifetimes are shorter still): a year keeps every date
    /// far inside uint64.
    uint256 public constant MAX_DELAY = 365 days;

    IERC20 private immutable _token;
    IAgentRegistry private immutable _agents;
    IPersonaRegistry private immutable _personas;
    uint256 private immutable _maxVoucherLifetime;
    uint256 private immutable _withdrawalDelay;
    uint256 private immutable _feeDelay;

    mapping(address account => uint256) private _deposits;
    mapping(address account => Withdrawal) private _withdrawals;
    mapping(address account => uint256) private _earnings;
    mapping(bytes32 channelKey => Channel) private _channels;
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
    /// @notice The payer's deposit does not cover the amount.
    error Escrow__InsufficientDeposit(address payer, uint256 required, uint256 available);
    /// @notice There is no pending withdrawal.
    error Escrow__NoWithdrawalRequested(address account);
    /// @notice The withdrawal can be completed only from `availableAt`.
    error Escrow__WithdrawalNotReady(uint256 availableAt);
    /// @notice There are no earnings to withdraw.
    error Escrow__NoEarnings(address account);
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
     * @param maxVoucherLifetime_ The furthest a voucher's expiry may be from the time it settles.
     * @param withdrawalDelay_ Seconds from a withdrawal request to its completion; above `maxVoucherLifetime_`.
     * @param treasury_ Receives protocol fees.
     * @param owner_ May schedule the protocol fee and change the treasury.
     */
    constructor(
        IERC20 token_,
        IAgentRegistry agents_,
        IPersonaRegistry personas_,
        uint256 maxVoucherLifetime_,
        uint256 withdrawalDelay_,
        address treasury_,
        address owner_
    ) EIP712("Soulmesh InferenceEscrow", "1") Ownable(owner_) {
        if (address(token_) == address(0) || treasury_ == address(0)) revert Escrow__ZeroAddress();
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
        if (amount == 0) revert Escrow__ZeroAmount();
        if (account == address(0)) revert Escrow__ZeroAddress();
        _deposits[account] += amount;
        emit Deposited(account, msg.sender, amount);
        _token.safeTransferFrom(msg.sender, address(this), amount);
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
        try IERC20Permit(address(_token)).permit(msg.sender, address(this), amount, deadline, v, r, s) {} catch {}
        depositFor(msg.sender, amount);
    }

    /**
     * @notice Asks to withdraw `amount` of the caller's deposit. It stays available to settle vouchers until
     * the withdrawal completes, `withdrawalDelay()` seconds from now. A new request replaces a pending one.
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
     * the deposit if settlements used part of it.
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

    // -------------------------------------------------------------- settlement

    /**
     * @notice Settles one voucher: pays its provider, the persona's holder and the protocol what the
     * session's new totals add to what was already settled, from the payer's deposit.
     * @dev Anyone may submit a voucher; the money goes where the voucher says.
     * @param voucher The voucher.
     * @param signature The payer's signature over it.
     * @return settlement What it paid.
     */
    function settle(Voucher calldata voucher, bytes calldata signature)
        external
        nonReentrant
        returns (Settlement memory settlement)
    {
        uint256 feeBps = _feeBps.at(block.timestamp);
        settlement = _settle(voucher, signature, feeBps);
        _creditFee(settlement.feeAmount);
    }

    /**
     * @notice Settles many vouchers in one transaction. It is all or nothing: simulate it first and leave
     * out any voucher that `previewSettle` or a single `settle` rejects.
     * @param vouchers The vouchers and their signatures.
     * @return paid Total paid out of deposits.
     */
    function settleBatch(SignedVoucher[] calldata vouchers) external nonReentrant returns (uint256 paid) {
        uint256 count = vouchers.length;
        if (count == 0) revert Escrow__EmptyBatch();
        uint256 feeBps = _feeBps.at(block.timestamp);
        uint256 fees;
        for (uint256 i; i < count; ++i) {
            Settlement memory s = _settle(vouchers[i].voucher, vouchers[i].signature, feeBps);
            fees += s.feeAmount;
            paid += s.providerAmount + s.royaltyAmount + s.feeAmount;
        }
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
     * @notice What settling `voucher` now would pay, checking everything `settle` checks but the signature.
     * @param voucher The voucher.
     * @return settlement What it would pay.
     */
    function previewSettle(Voucher calldata voucher) external view returns (Settlement memory settlement) {
        (settlement,) = _price(voucher, _feeBps.at(block.timestamp));
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
     * @notice The latest settled session of a channel and its cumulative totals.
     * @return session The session number (zero before the first settlement).
     * @return inputTokens Input tokens settled for that session.
     * @return outputTokens Output tokens settled for that session.
     */
    function settledOf(address payer, address provider, uint256 agentId)
        external
        view
        returns (uint64 session, uint64 inputTokens, uint64 outputTokens)
    {
        Channel memory c = _channels[channelKey(payer, provider, agentId)];
        return (c.session, c.inputTokens, c.outputTokens);
    }

    /// @notice An account's deposit, pending withdrawal included.
    function depositOf(address account) external view returns (uint256) {
        return _deposits[account];
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

    /// @notice The furthest a voucher's expiry may be from the time it settles, in seconds.
    function maxVoucherLifetime() external view returns (uint256) {
        return _maxVoucherLifetime;
    }

    /// @notice Seconds from a withdrawal request to its completion.
    function withdrawalDelay() external view returns (uint256) {
        return _withdrawalDelay;
    }

    /// @notice Seconds from a protocol fee change to its taking effect.
    function feeDelay() external view returns (uint256) {
        return _feeDelay;
    }

    // ---------------------------------------------------------------- internal

    function _settle(Voucher calldata v, bytes calldata signature, uint256 feeBps)
        private
        returns (Settlement memory s)
    {
        bytes32 key;
        (s, key) = _price(v, feeBps);
        if (!_isValidSignature(v.payer, _hashTypedDataV4(_structHash(v)), signature)) {
            revert Escrow__InvalidSignature(v.payer);
        }
        uint256 total = s.providerAmount + s.royaltyAmount + s.feeAmount;
        uint256 available = _deposits[v.payer];
        if (total > available) revert Escrow__InsufficientDeposit(v.payer, total, available);

        _channels[key] = Channel(v.session, v.inputTokens, v.outputTokens);
        unchecked {
            _deposits[v.payer] = available - total;
        }
        _earnings[v.provider] += s.providerAmount;
        if (s.royaltyAmount != 0) _earnings[s.creator] += s.royaltyAmount;
        emit VoucherSettled(
            s.personaId,
            v.provider,
            v.agentId,
            v.payer,
            v.session,
            s.inputTokens,
            s.outputTokens,
            s.providerAmount,
            s.royaltyAmount,
            s.feeAmount
        );
    }

    /// @dev Prices on cumulative totals and subtracts what they priced at last settlement, so that a
    /// session's total cost never depends on how many times it was settled (no rounding drift).
    function _price(Voucher calldata v, uint256 feeBps) private view returns (Settlement memory s, bytes32 key) {
        if (block.timestamp > v.expiry) revert Escrow__VoucherExpired(v.expiry);
        uint256 latest = block.timestamp + _maxVoucherLifetime;
        if (v.expiry > latest) revert Escrow__ExpiryTooFar(v.expiry, latest);

        key = channelKey(v.payer, v.provider, v.agentId);
        Channel memory c = _channels[key];
        uint64 settledInput;
        uint64 settledOutput;
        if (v.session < c.session) revert Escrow__SessionSuperseded(key, c.session, v.session);
        if (v.session == c.session) {
            (settledInput, settledOutput) = (c.inputTokens, c.outputTokens);
            if (v.inputTokens < settledInput || v.outputTokens < settledOutput) {
                revert Escrow__CumulativeBelowSettled(key, settledInput, settledOutput, v.inputTokens, v.outputTokens);
            }
            if (v.inputTokens == settledInput && v.outputTokens == settledOutput) {
                revert Escrow__AlreadySettled(key, v.session);
            }
        } else if (v.inputTokens == 0 && v.outputTokens == 0) {
            revert Escrow__EmptyVoucher();
        }

        s.personaId = _agents.personaOf(v.agentId);
        uint256 royalty;
        (s.creator, royalty) = _personas.royaltyOf(s.personaId);
        s.inputTokens = v.inputTokens - settledInput;
        s.outputTokens = v.outputTokens - settledOutput;

        (uint256 providerNow, uint256 royaltyNow, uint256 feeNow) =
            _cost(v.inputTokens, v.outputTokens, v.priceInputPerMillion, v.priceOutputPerMillion, royalty, feeBps);
        (uint256 providerBefore, uint256 royaltyBefore, uint256 feeBefore) =
            _cost(settledInput, settledOutput, v.priceInputPerMillion, v.priceOutputPerMillion, royalty, feeBps);
        s.providerAmount = providerNow - providerBefore;
        s.royaltyAmount = royaltyNow - royaltyBefore;
        s.feeAmount = feeNow - feeBefore;
    }

    function _cost(
        uint256 inputTokens,
        uint256 outputTokens,
        uint256 priceInput,
        uint256 priceOutput,
        uint256 royalty,
        uint256 feeBps
    ) private pure returns (uint256 providerAmount, uint256 royaltyAmount, uint256 feeAmount) {
        providerAmount = (inputTokens * priceInput + outputTokens * priceOutput) / 1e6;
        royaltyAmount = ((inputTokens + outputTokens) * royalty) / 1e6;
        feeAmount = ((providerAmount + royaltyAmount) * feeBps) / 10_000;
    }

    function _creditFee(uint256 amount) private {
        if (amount != 0) _earnings[_treasury] += amount;
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
                v.expiry
            )
        );
    }

    /// @dev Tries ECDSA first so that an EOA payer costs no EXTCODESIZE; falls back to ERC-1271 for
    /// smart-contract wallets.
    function _isValidSignature(address signer, bytes32 digest, bytes calldata signature) private view returns (bool) {
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, signature);
        if (err == ECDSA.RecoverError.NoError && recovered == signer) return true;
        return signer.code.length != 0 && SignatureChecker.isValidERC1271SignatureNowCalldata(signer, digest, signature);
    }
}
