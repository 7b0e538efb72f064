// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {SoulmeshFixture} from "./test/SoulmeshFixture.sol";
import {InferenceEscrow} from "./InferenceEscrow.sol";
import {AgentRegistry} from "./AgentRegistry.sol";
import {PersonaRegistry} from "./PersonaRegistry.sol";
import {MockERC1271Wallet} from "./mocks/MockERC1271Wallet.sol";
import {IPersonaRegistry} from "./interfaces/IPersonaRegistry.sol";
import {IProviderRegistry} from "./interfaces/IProviderRegistry.sol";

/// @dev Answers only what the escrow's constructor asks of a persona registry.
contract SlowRoyaltyRegistry {
    uint256 private immutable _delay;

    constructor(uint256 delay) {
        _delay = delay;
    }

    function royaltyDelay() external view returns (uint256) {
        return _delay;
    }
}

contract InferenceEscrowTest is SoulmeshFixture {
    uint256 internal personaId;
    uint256 internal agentId;
    uint256 internal constant ROYALTY = 200_000; // 0.20 tUSD per million tokens
    uint128 internal constant PRICE_IN = 500_000;
    uint128 internal constant PRICE_OUT = 1_500_000;
    uint256 internal originalChainId;

    function setUp() public override {
        super.setUp();
        personaId = _createPersona(creator, ROYALTY, 0);
        agentId = _mintAgent(user, personaId);
        _register(provider);
        // 100 tUSD free and 100 tUSD in the lane with `provider`.
        _deposit(user, 200 * USD);
        vm.prank(user);
        escrow.commit(provider, 100 * USD);
    }

    // ------------------------------------------------------------- helpers

    function _voucher(uint64 session, uint64 inputTokens, uint64 outputTokens)
        internal
        view
        returns (InferenceEscrow.Voucher memory)
    {
        return InferenceEscrow.Voucher({
            payer: user,
            provider: provider,
            agentId: agentId,
            session: session,
            inputTokens: inputTokens,
            outputTokens: outputTokens,
            priceInputPerMillion: PRICE_IN,
            priceOutputPerMillion: PRICE_OUT,
            royaltyPerMillion: uint96(ROYALTY),
            feeBps: 0,
            expiry: uint64(block.timestamp + 1 hours)
        });
    }

    function _sign(uint256 key, InferenceEscrow.Voucher memory v) internal view returns (bytes memory) {
        (uint8 sv, bytes32 r, bytes32 s) = vm.sign(key, escrow.hashVoucher(v));
        return abi.encodePacked(r, s, sv);
    }

    function _settle(InferenceEscrow.Voucher memory v) internal returns (InferenceEscrow.Settlement memory) {
        bytes memory sig = _sign(userKey, v);
        vm.prank(provider);
        return escrow.settle(v, sig);
    }

    /// @dev An EIP-2612 permit from `owner` letting the escrow take `value` until `deadline`.
    function _permit(address owner_, uint256 key, uint256 value, uint256 deadline)
        internal
        view
        returns (uint8 v, bytes32 r, bytes32 s)
    {
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                owner_,
                address(escrow),
                value,
                token.nonces(owner_),
                deadline
            )
        );
        return vm.sign(key, keccak256(abi.encodePacked("\x19\x01", token.DOMAIN_SEPARATOR(), structHash)));
    }

    function _lane(address payer, address to) internal view returns (uint256 amount) {
        (amount,) = escrow.laneOf(payer, to);
    }

    function _expectedCost(uint256 inputTokens, uint256 outputTokens, uint256 royalty, uint256 feeBps)
        internal
        pure
        returns (uint256 providerAmount, uint256 royaltyAmount, uint256 feeAmount)
    {
        providerAmount = (inputTokens * PRICE_IN + outputTokens * PRICE_OUT) / 1e6;
        royaltyAmount = ((inputTokens + outputTokens) * royalty) / 1e6;
        feeAmount = ((providerAmount + royaltyAmount) * feeBps) / 10_000;
    }

    function _assertBalanceEqualsOwed() internal view {
        uint256 owed = escrow.depositOf(user) + _lane(user, provider) + escrow.earningsOf(provider)
            + escrow.earningsOf(creator) + escrow.earningsOf(treasury) + escrow.depositOf(stranger)
            + _lane(stranger, provider);
        assertEq(token.balanceOf(address(escrow)), owed, "escrow balance == deposits + lanes + earnings");
    }

    // ------------------------------------------------------------- deposits

    function test_Deposit_CreditsAndEmits() public {
        _fundAndApprove(stranger, address(escrow), 5 * USD);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.Deposited(stranger, stranger, 5 * USD);
        vm.prank(stranger);
        escrow.deposit(5 * USD);
        assertEq(escrow.depositOf(stranger), 5 * USD);
        _assertBalanceEqualsOwed();
    }

    function test_DepositFor_CreditsTheAccountNotThePayer() public {
        _fundAndApprove(stranger, address(escrow), 3 * USD);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.Deposited(user, stranger, 3 * USD);
        vm.prank(stranger);
        escrow.depositFor(user, 3 * USD);
        assertEq(escrow.depositOf(user), 103 * USD);
        assertEq(_lane(user, provider), 100 * USD, "a deposit commits nothing");
        assertEq(escrow.depositOf(stranger), 0);
    }

    function test_Deposit_RevertsWhen_ZeroAmount() public {
        vm.expectRevert(InferenceEscrow.Escrow__ZeroAmount.selector);
        vm.prank(user);
        escrow.deposit(0);
    }

    function test_DepositFor_RevertsWhen_ZeroAccount() public {
        _fundAndApprove(stranger, address(escrow), 1 * USD);
        vm.expectRevert(InferenceEscrow.Escrow__ZeroAddress.selector);
        vm.prank(stranger);
        escrow.depositFor(address(0), 1 * USD);
    }

    function test_DepositWithPermit_InOneTransaction() public {
        (address alice, uint256 aliceKey) = makeAddrAndKey("alice");
        token.mint(alice, 7 * USD);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _permit(alice, aliceKey, 7 * USD, deadline);
        vm.prank(alice);
        escrow.depositWithPermit(7 * USD, deadline, v, r, s);
        assertEq(escrow.depositOf(alice), 7 * USD);
        assertEq(token.balanceOf(alice), 0);
    }

    function test_DepositWithPermit_RevertsWithoutPermitOrAllowance() public {
        token.mint(stranger, 1 * USD);
        vm.prank(stranger);
        vm.expectRevert();
        escrow.depositWithPermit(1 * USD, block.timestamp, 27, bytes32(0), bytes32(0));
        assertEq(escrow.depositOf(stranger), 0);
    }

    // ----------------------------------------------------------- withdrawals

    function test_Withdrawal_WaitsForTheDelayToTheSecond() public {
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.WithdrawalRequested(user, 40 * USD, block.timestamp + WITHDRAWAL_DELAY);
        vm.prank(user);
        uint256 availableAt = escrow.requestWithdrawal(40 * USD);
        assertEq(availableAt, block.timestamp + WITHDRAWAL_DELAY);
        (uint256 amount, uint256 at) = escrow.pendingWithdrawalOf(user);
        assertEq(amount, 40 * USD);
        assertEq(at, availableAt);

        vm.warp(availableAt - 1);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__WithdrawalNotReady.selector, availableAt));
        vm.prank(user);
        escrow.completeWithdrawal();

        vm.warp(availableAt);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.WithdrawalCompleted(user, 40 * USD);
        vm.prank(user);
        assertEq(escrow.completeWithdrawal(), 40 * USD);
        assertEq(escrow.depositOf(user), 60 * USD);
        assertEq(token.balanceOf(user), 40 * USD);
        (amount, at) = escrow.pendingWithdrawalOf(user);
        assertEq(amount + at, 0);
        _assertBalanceEqualsOwed();
    }

    function test_Withdrawal_OutlivesEveryVoucherAcceptedBeforeIt() public {
        // The longest-lived voucher signed just before the request expires before the withdrawal completes.
        InferenceEscrow.Voucher memory v = _voucher(1, 10, 10);
        v.expiry = uint64(block.timestamp + MAX_VOUCHER_LIFETIME);
        vm.prank(user);
        uint256 availableAt = escrow.requestWithdrawal(1 * USD);
        assertGt(availableAt, v.expiry);
    }

    function test_RequestWithdrawal_RevertsWhen_ZeroOrAboveDeposit() public {
        vm.startPrank(user);
        vm.expectRevert(InferenceEscrow.Escrow__ZeroAmount.selector);
        escrow.requestWithdrawal(0);
        vm.expectRevert(
            abi.encodeWithSelector(InferenceEscrow.Escrow__InsufficientDeposit.selector, user, 101 * USD, 100 * USD)
        );
        escrow.requestWithdrawal(101 * USD);
        vm.stopPrank();
    }

    function test_CancelWithdrawal() public {
        vm.startPrank(user);
        escrow.requestWithdrawal(1 * USD);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.WithdrawalCancelled(user);
        escrow.cancelWithdrawal();
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__NoWithdrawalRequested.selector, user));
        escrow.completeWithdrawal();
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__NoWithdrawalRequested.selector, user));
        escrow.cancelWithdrawal();
        vm.stopPrank();
        assertEq(escrow.depositOf(user), 100 * USD);
    }

    // ----------------------------------------------------------------- lanes

    function test_Commit_MovesFreeDepositIntoTheLaneAndEmits() public {
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.Committed(user, provider, 30 * USD, 130 * USD);
        vm.prank(user);
        escrow.commit(provider, 30 * USD);
        assertEq(escrow.depositOf(user), 70 * USD);
        assertEq(_lane(user, provider), 130 * USD);
        _assertBalanceEqualsOwed();
    }

    function test_Commit_RevertsWhen_NotAProviderZeroOrAboveDeposit() public {
        vm.startPrank(user);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__NotAProvider.selector, stranger));
        escrow.commit(stranger, 1 * USD);
        vm.expectRevert(InferenceEscrow.Escrow__ZeroAmount.selector);
        escrow.commit(provider, 0);
        vm.expectRevert(
            abi.encodeWithSelector(InferenceEscrow.Escrow__InsufficientDeposit.selector, user, 101 * USD, 100 * USD)
        );
        escrow.commit(provider, 101 * USD);
        vm.stopPrank();
        assertEq(escrow.depositOf(user), 100 * USD);
        assertEq(_lane(user, provider), 100 * USD);
    }

    function test_DepositAndCommit_InOneTransaction() public {
        _fundAndApprove(stranger, address(escrow), 9 * USD);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.Deposited(stranger, stranger, 9 * USD);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.Committed(stranger, provider, 9 * USD, 9 * USD);
        vm.prank(stranger);
        escrow.depositAndCommit(provider, 9 * USD);
        assertEq(escrow.depositOf(stranger), 0);
        assertEq(_lane(stranger, provider), 9 * USD);
        _assertBalanceEqualsOwed();
    }

    function test_DepositWithPermitAndCommit_NeedsNoPriorApproval() public {
        (address alice, uint256 aliceKey) = makeAddrAndKey("alice");
        token.mint(alice, 7 * USD);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _permit(alice, aliceKey, 7 * USD, deadline);
        vm.prank(alice);
        escrow.depositWithPermitAndCommit(provider, 7 * USD, deadline, v, r, s);
        assertEq(_lane(alice, provider), 7 * USD);
        assertEq(token.balanceOf(alice), 0);
    }

    function test_LaneRelease_WaitsForTheDelayToTheSecond() public {
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.LaneReleaseRequested(user, provider, 100 * USD, block.timestamp + WITHDRAWAL_DELAY);
        vm.prank(user);
        uint256 releaseAt = escrow.requestRelease(provider);
        (, uint256 at) = escrow.laneOf(user, provider);
        assertEq(at, releaseAt);

        vm.warp(releaseAt - 1);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__ReleaseNotReady.selector, releaseAt));
        vm.prank(user);
        escrow.completeRelease(provider);

        vm.warp(releaseAt);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.LaneReleased(user, provider, 100 * USD);
        vm.prank(user);
        assertEq(escrow.completeRelease(provider), 100 * USD);
        assertEq(escrow.depositOf(user), 200 * USD, "the remainder returns to the free deposit");
        (uint256 amount, uint256 at2) = escrow.laneOf(user, provider);
        assertEq(amount + at2, 0);
        _assertBalanceEqualsOwed();
    }

    function test_CompleteReleaseAndWithdraw_PaysTheLaneOutAfterOneDelay() public {
        vm.prank(user);
        uint256 releaseAt = escrow.requestRelease(provider);
        InferenceEscrow.Settlement memory s = _settle(_voucher(1, 1_000_000, 0));
        uint256 left = 100 * USD - s.providerAmount - s.royaltyAmount;

        vm.warp(releaseAt - 1);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__ReleaseNotReady.selector, releaseAt));
        vm.prank(user);
        escrow.completeReleaseAndWithdraw(provider);

        vm.warp(releaseAt);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.LaneWithdrawn(user, provider, left);
        vm.prank(user);
        assertEq(escrow.completeReleaseAndWithdraw(provider), left);
        assertEq(token.balanceOf(user), left, "paid out, not parked in the free deposit");
        assertEq(escrow.depositOf(user), 100 * USD);
        assertEq(_lane(user, provider), 0);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__NoReleaseRequested.selector, user, provider));
        vm.prank(user);
        escrow.completeReleaseAndWithdraw(provider);
        _assertBalanceEqualsOwed();
    }

    function test_LaneRelease_LeavesTheLaneSettleableUntilComplete() public {
        vm.prank(user);
        uint256 releaseAt = escrow.requestRelease(provider);
        // The longest-lived voucher the provider accepted just before the request expires before the release.
        InferenceEscrow.Voucher memory v = _voucher(1, 1_000_000, 1_000_000);
        v.expiry = uint64(block.timestamp + MAX_VOUCHER_LIFETIME);
        assertLt(v.expiry, releaseAt);
        bytes memory sig = _sign(userKey, v);
        vm.warp(v.expiry);
        vm.prank(provider);
        InferenceEscrow.Settlement memory s = escrow.settle(v, sig);
        uint256 spent = s.providerAmount + s.royaltyAmount + s.feeAmount;
        vm.warp(releaseAt);
        vm.prank(user);
        assertEq(escrow.completeRelease(provider), 100 * USD - spent, "returns what is left");
        _assertBalanceEqualsOwed();
    }

    function test_LaneRelease_CancelledByTheCallerOrByCommittingAgain() public {
        vm.startPrank(user);
        escrow.requestRelease(provider);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.LaneReleaseCancelled(user, provider);
        escrow.cancelRelease(provider);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__NoReleaseRequested.selector, user, provider));
        escrow.completeRelease(provider);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__NoReleaseRequested.selector, user, provider));
        escrow.cancelRelease(provider);

        escrow.requestRelease(provider);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.LaneReleaseCancelled(user, provider);
        escrow.commit(provider, 1 * USD);
        (uint256 amount, uint256 releaseAt) = escrow.laneOf(user, provider);
        assertEq(amount, 101 * USD);
        assertEq(releaseAt, 0);
        vm.stopPrank();
    }

    function test_RequestRelease_RevertsWhen_LaneEmpty() public {
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__EmptyLane.selector, stranger, provider));
        vm.prank(stranger);
        escrow.requestRelease(provider);
    }

    function test_PreviewSettle_ChecksTheLane() public {
        InferenceEscrow.Voucher memory v = _voucher(1, 50_000_000, 50_000_000);
        (uint256 p, uint256 r,) = _expectedCost(50_000_000, 50_000_000, ROYALTY, 0);
        vm.expectRevert(
            abi.encodeWithSelector(InferenceEscrow.Escrow__InsufficientLane.selector, user, provider, p + r, 100 * USD)
        );
        escrow.previewSettle(v);
    }

    // ------------------------------------------------------------ settlement

    function test_Settle_PaysEachPartyExactlyAndEmits() public {
        InferenceEscrow.Voucher memory v = _voucher(1, 12_345, 6_789);
        (uint256 p, uint256 r, uint256 f) = _expectedCost(12_345, 6_789, ROYALTY, 0);
        bytes memory sig = _sign(userKey, v);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.VoucherSettled(personaId, provider, agentId, user, 1, 12_345, 6_789, p, r, f);
        vm.prank(provider);
        escrow.settle(v, sig);
        assertEq(escrow.earningsOf(provider), p);
        assertEq(escrow.earningsOf(creator), r);
        assertEq(_lane(user, provider), 100 * USD - p - r, "paid from the lane");
        assertEq(escrow.depositOf(user), 100 * USD, "the free deposit is untouched");
        (uint64 session, uint64 inTok, uint64 outTok, uint256 paid) = escrow.settledOf(user, provider, agentId);
        assertEq(uint256(session), 1);
        assertEq(uint256(inTok), 12_345);
        assertEq(uint256(outTok), 6_789);
        assertEq(paid, p + r);
        _assertBalanceEqualsOwed();
    }

    function test_Settle_PaysOnlyTheDifferenceSinceTheLastVoucher() public {
        _settle(_voucher(1, 1_000, 500));
        uint256 before = escrow.earningsOf(provider);
        InferenceEscrow.Settlement memory s = _settle(_voucher(1, 3_000, 800));
        (uint256 pAll,,) = _expectedCost(3_000, 800, ROYALTY, 0);
        (uint256 pFirst,,) = _expectedCost(1_000, 500, ROYALTY, 0);
        assertEq(s.providerAmount, pAll - pFirst);
        assertEq(uint256(s.inputTokens), 2_000);
        assertEq(uint256(s.outputTokens), 300);
        assertEq(escrow.earningsOf(provider), before + pAll - pFirst);
    }

    function testFuzz_Settle_SteppedCostsWhatOneSettleCosts(uint64 inputTokens, uint64 outputTokens, uint8 steps)
        public
    {
        inputTokens = uint64(bound(inputTokens, 1, 1e9));
        outputTokens = uint64(bound(outputTokens, 1, 1e9));
        steps = uint8(bound(steps, 1, 12));
        _depositAndCommit(user, provider, 10_000_000 * USD);
        uint256 laneBefore = _lane(user, provider);
        for (uint256 i = 1; i <= steps; ++i) {
            uint64 inNow = uint64((uint256(inputTokens) * i) / steps);
            uint64 outNow = uint64((uint256(outputTokens) * i) / steps);
            (, uint64 settledIn, uint64 settledOut,) = escrow.settledOf(user, provider, agentId);
            if (inNow == settledIn && outNow == settledOut) continue;
            _settle(_voucher(1, inNow, outNow));
        }
        (uint256 p, uint256 r,) = _expectedCost(inputTokens, outputTokens, ROYALTY, 0);
        assertEq(laneBefore - _lane(user, provider), p + r, "no rounding drift");
        (,,, uint256 paid) = escrow.settledOf(user, provider, agentId);
        assertEq(paid, p + r, "the session's cost is recorded");
    }

    function test_Settle_RevertsWhen_SameVoucherTwice() public {
        InferenceEscrow.Voucher memory v = _voucher(1, 100, 100);
        bytes memory sig = _sign(userKey, v);
        vm.startPrank(provider);
        escrow.settle(v, sig);
        bytes32 key = escrow.channelKey(user, provider, agentId);
        uint256 lane = _lane(user, provider);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__AlreadySettled.selector, key, uint64(1)));
        escrow.settle(v, sig);
        vm.stopPrank();
        assertEq(_lane(user, provider), lane);
    }

    function test_Settle_RevertsWhen_CumulativeTotalIsLower() public {
        _settle(_voucher(1, 1_000, 1_000));
        bytes32 key = escrow.channelKey(user, provider, agentId);
        InferenceEscrow.Voucher memory lower = _voucher(1, 999, 2_000);
        bytes memory sig = _sign(userKey, lower);
        vm.expectRevert(
            abi.encodeWithSelector(
                InferenceEscrow.Escrow__CumulativeBelowSettled.selector,
                key,
                uint64(1_000),
                uint64(1_000),
                uint64(999),
                uint64(2_000)
            )
        );
        vm.prank(provider);
        escrow.settle(lower, sig);
    }

    function test_Settle_RevertsWhen_SessionSuperseded() public {
        InferenceEscrow.Voucher memory early = _voucher(5, 100, 100);
        bytes memory earlySig = _sign(userKey, early);
        _settle(_voucher(6, 100, 100));
        bytes32 key = escrow.channelKey(user, provider, agentId);
        vm.expectRevert(
            abi.encodeWithSelector(InferenceEscrow.Escrow__SessionSuperseded.selector, key, uint64(6), uint64(5))
        );
        vm.prank(provider);
        escrow.settle(early, earlySig);
    }

    function test_Settle_ANewSessionStartsFromZero() public {
        _settle(_voucher(1, 1_000, 1_000));
        InferenceEscrow.Settlement memory s = _settle(_voucher(2, 10, 10));
        assertEq(uint256(s.inputTokens), 10);
        assertEq(uint256(s.outputTokens), 10);
    }

    function test_Settle_RevertsWhen_EmptyVoucher() public {
        InferenceEscrow.Voucher memory v = _voucher(1, 0, 0);
        bytes memory sig = _sign(userKey, v);
        vm.expectRevert(InferenceEscrow.Escrow__EmptyVoucher.selector);
        vm.prank(provider);
        escrow.settle(v, sig);
    }

    function test_Settle_RevertsWhen_Expired() public {
        InferenceEscrow.Voucher memory v = _voucher(1, 100, 100);
        bytes memory sig = _sign(userKey, v);
        vm.warp(v.expiry + 1);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__VoucherExpired.selector, v.expiry));
        vm.prank(provider);
        escrow.settle(v, sig);
        vm.warp(v.expiry); // the expiry second itself is still valid
        vm.prank(provider);
        escrow.settle(v, sig);
    }

    function test_Settle_RevertsWhen_ExpiryBeyondTheLongestLifetime() public {
        InferenceEscrow.Voucher memory v = _voucher(1, 100, 100);
        v.expiry = uint64(block.timestamp + MAX_VOUCHER_LIFETIME + 1);
        bytes memory sig = _sign(userKey, v);
        vm.expectRevert(
            abi.encodeWithSelector(
                InferenceEscrow.Escrow__ExpiryTooFar.selector, v.expiry, block.timestamp + MAX_VOUCHER_LIFETIME
            )
        );
        vm.prank(provider);
        escrow.settle(v, sig);
    }

    function test_Settle_RevertsWhen_WrongSigner() public {
        (, uint256 otherKey) = makeAddrAndKey("mallory");
        InferenceEscrow.Voucher memory v = _voucher(1, 100, 100);
        bytes memory sig = _sign(otherKey, v);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__InvalidSignature.selector, user));
        vm.prank(provider);
        escrow.settle(v, sig);
        assertEq(escrow.depositOf(user), 100 * USD);
    }

    function test_Settle_RevertsWhen_AFieldWasChangedAfterSigning() public {
        InferenceEscrow.Voucher memory v = _voucher(1, 100, 100);
        bytes memory sig = _sign(userKey, v);
        v.priceOutputPerMillion += 1;
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__InvalidSignature.selector, user));
        vm.prank(provider);
        escrow.settle(v, sig);
    }

    function test_Settle_RevertsWhen_SignedForAnotherChain() public {
        InferenceEscrow.Voucher memory v = _voucher(1, 100, 100);
        // Kept in storage: via-IR treats chainid() as constant and would re-read it after the switch.
        originalChainId = block.chainid;
        vm.chainId(originalChainId + 1);
        bytes memory sig = _sign(userKey, v);
        vm.chainId(originalChainId);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__InvalidSignature.selector, user));
        vm.prank(provider);
        escrow.settle(v, sig);
    }

    function test_Settle_RevertsWhen_SignedForAnotherContract() public {
        InferenceEscrow other =
            new InferenceEscrow(token, agents, personas, providers, MAX_VOUCHER_LIFETIME, WITHDRAWAL_DELAY, treasury, owner);
        InferenceEscrow.Voucher memory v = _voucher(1, 100, 100);
        (uint8 sv, bytes32 r, bytes32 s) = vm.sign(userKey, other.hashVoucher(v));
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__InvalidSignature.selector, user));
        vm.prank(provider);
        escrow.settle(v, abi.encodePacked(r, s, sv));
    }

    function test_Settle_RevertsWhen_SignatureMalformed() public {
        InferenceEscrow.Voucher memory v = _voucher(1, 100, 100);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__InvalidSignature.selector, user));
        vm.prank(provider);
        escrow.settle(v, hex"1234");
    }

    function test_Settle_RevertsWhen_AboveThePayersLane() public {
        // The free deposit (100 tUSD) would cover it; only the lane counts.
        InferenceEscrow.Voucher memory v = _voucher(1, 50_000_000, 50_000_000);
        (uint256 p, uint256 r,) = _expectedCost(50_000_000, 50_000_000, ROYALTY, 0);
        assertGt(p + r, 100 * USD);
        assertLt(p + r, 200 * USD);
        bytes memory sig = _sign(userKey, v);
        vm.expectRevert(
            abi.encodeWithSelector(InferenceEscrow.Escrow__InsufficientLane.selector, user, provider, p + r, 100 * USD)
        );
        vm.prank(provider);
        escrow.settle(v, sig);
        (uint64 session,,,) = escrow.settledOf(user, provider, agentId);
        assertEq(uint256(session), 0, "nothing recorded");
        assertEq(escrow.depositOf(user), 100 * USD);
    }

    function test_Settle_RevertsWhen_CallerIsNotTheProviderOrItsSettler() public {
        InferenceEscrow.Voucher memory v = _voucher(1, 100, 100);
        bytes memory sig = _sign(userKey, v);
        vm.expectRevert(
            abi.encodeWithSelector(InferenceEscrow.Escrow__NotProviderOrSettler.selector, provider, stranger)
        );
        vm.prank(stranger);
        escrow.settle(v, sig);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__NotProviderOrSettler.selector, provider, user));
        vm.prank(user);
        escrow.settle(v, sig);
    }

    function test_SetSettler_LetsARelayerSettleForTheProvider() public {
        address relayer = makeAddr("relayer");
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.SettlerSet(provider, relayer, true);
        vm.prank(provider);
        escrow.setSettler(relayer, true);
        assertTrue(escrow.isSettler(provider, relayer));
        assertTrue(escrow.isSettler(provider, provider));
        InferenceEscrow.Voucher memory v = _voucher(1, 1_000, 1_000);
        bytes memory sig = _sign(userKey, v);
        vm.prank(relayer);
        InferenceEscrow.Settlement memory s = escrow.settle(v, sig);
        assertEq(escrow.earningsOf(provider), s.providerAmount, "the provider is paid, not the relayer");
        assertEq(escrow.earningsOf(relayer), 0);

        vm.prank(provider);
        escrow.setSettler(relayer, false);
        v = _voucher(1, 2_000, 2_000);
        sig = _sign(userKey, v);
        vm.expectRevert(
            abi.encodeWithSelector(InferenceEscrow.Escrow__NotProviderOrSettler.selector, provider, relayer)
        );
        vm.prank(relayer);
        escrow.settle(v, sig);
        vm.expectRevert(InferenceEscrow.Escrow__ZeroAddress.selector);
        vm.prank(provider);
        escrow.setSettler(address(0), true);
    }

    function test_Settle_RevertsWhen_TotalsAboveWhatAChannelRecords() public {
        InferenceEscrow.Voucher memory v = _voucher(1, uint64(escrow.MAX_SESSION_TOKENS()) + 1, 0);
        bytes memory sig = _sign(userKey, v);
        vm.expectRevert(InferenceEscrow.Escrow__VoucherTooLarge.selector);
        vm.prank(provider);
        escrow.settle(v, sig);
    }

    function test_Settle_RevertsWhen_UnknownAgent() public {
        InferenceEscrow.Voucher memory v = _voucher(1, 100, 100);
        v.agentId = 999;
        bytes memory sig = _sign(userKey, v);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.Agent__UnknownAgent.selector, 999));
        vm.prank(provider);
        escrow.settle(v, sig);
    }

    function test_Settle_AcceptsERC1271Wallets() public {
        (address walletOwner, uint256 walletKey) = makeAddrAndKey("wallet-owner");
        MockERC1271Wallet wallet = new MockERC1271Wallet(walletOwner);
        token.mint(address(this), 10 * USD);
        token.approve(address(escrow), 10 * USD);
        escrow.depositFor(address(wallet), 10 * USD);
        vm.prank(address(wallet));
        escrow.commit(provider, 10 * USD);
        InferenceEscrow.Voucher memory v = _voucher(1, 1_000, 1_000);
        v.payer = address(wallet);
        (uint8 sv, bytes32 r, bytes32 s) = vm.sign(walletKey, escrow.hashVoucher(v));
        assertTrue(escrow.isValidVoucherSignature(v, abi.encodePacked(r, s, sv)));
        vm.prank(provider);
        escrow.settle(v, abi.encodePacked(r, s, sv));
        assertLt(_lane(address(wallet), provider), 10 * USD);

        (, uint256 otherKey) = makeAddrAndKey("not-the-owner");
        v.session = 2;
        (sv, r, s) = vm.sign(otherKey, escrow.hashVoucher(v));
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__InvalidSignature.selector, address(wallet)));
        vm.prank(provider);
        escrow.settle(v, abi.encodePacked(r, s, sv));
    }

    function test_PreviewSettle_MatchesSettle() public {
        InferenceEscrow.Voucher memory v = _voucher(1, 4_321, 1_234);
        InferenceEscrow.Settlement memory preview = escrow.previewSettle(v);
        InferenceEscrow.Settlement memory done = _settle(v);
        assertEq(preview.providerAmount, done.providerAmount);
        assertEq(preview.royaltyAmount, done.royaltyAmount);
        assertEq(preview.feeAmount, done.feeAmount);
        assertEq(preview.creator, creator);
        assertEq(preview.personaId, personaId);
    }

    // --------------------------------------------------------------- batches

    function test_SettleBatch_PaysTheSumOfItsVouchers() public {
        (address user2, uint256 user2Key) = makeAddrAndKey("user2");
        uint256 agent2 = _mintAgent(user2, personaId);
        _depositAndCommit(user2, provider, 50 * USD);
        InferenceEscrow.SignedVoucher[] memory batch = new InferenceEscrow.SignedVoucher[](2);
        batch[0] = InferenceEscrow.SignedVoucher(_voucher(1, 1_000, 2_000), "");
        batch[0].signature = _sign(userKey, batch[0].voucher);
        InferenceEscrow.Voucher memory v2 = _voucher(1, 3_000, 4_000);
        (v2.payer, v2.agentId) = (user2, agent2);
        batch[1] = InferenceEscrow.SignedVoucher(v2, _sign(user2Key, v2));

        vm.prank(provider);
        uint256 paid = escrow.settleBatch(batch);
        (uint256 p1, uint256 r1,) = _expectedCost(1_000, 2_000, ROYALTY, 0);
        (uint256 p2, uint256 r2,) = _expectedCost(3_000, 4_000, ROYALTY, 0);
        assertEq(paid, p1 + r1 + p2 + r2);
        assertEq(escrow.earningsOf(provider), p1 + p2);
        assertEq(escrow.earningsOf(creator), r1 + r2);
    }

    function test_SettleBatch_SkipsWhatCannotSettleAndPaysTheRest() public {
        InferenceEscrow.SignedVoucher[] memory batch = new InferenceEscrow.SignedVoucher[](3);
        batch[0] = InferenceEscrow.SignedVoucher(_voucher(1, 1_000, 2_000), "");
        batch[0].signature = _sign(userKey, batch[0].voucher);
        batch[1] = InferenceEscrow.SignedVoucher(_voucher(2, 1_000, 2_000), hex"00");
        batch[2] = InferenceEscrow.SignedVoucher(_voucher(3, 10, 20), "");
        batch[2].signature = _sign(userKey, batch[2].voucher);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.SettlementSkipped(
            provider, user, agentId, 2, abi.encodeWithSelector(InferenceEscrow.Escrow__InvalidSignature.selector, user)
        );
        vm.prank(provider);
        uint256 paid = escrow.settleBatch(batch);
        (uint256 p1, uint256 r1,) = _expectedCost(1_000, 2_000, ROYALTY, 0);
        (uint256 p3, uint256 r3,) = _expectedCost(10, 20, ROYALTY, 0);
        assertEq(paid, p1 + r1 + p3 + r3);
        assertEq(escrow.earningsOf(provider), p1 + p3);
        (uint64 session,,,) = escrow.settledOf(user, provider, agentId);
        assertEq(uint256(session), 3);
        _assertBalanceEqualsOwed();
    }

    function test_SettleBatch_SkipsEveryEntryOfAnotherProvider() public {
        InferenceEscrow.SignedVoucher[] memory batch = new InferenceEscrow.SignedVoucher[](1);
        batch[0] = InferenceEscrow.SignedVoucher(_voucher(1, 1_000, 2_000), "");
        batch[0].signature = _sign(userKey, batch[0].voucher);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.SettlementSkipped(
            provider,
            user,
            agentId,
            1,
            abi.encodeWithSelector(InferenceEscrow.Escrow__NotProviderOrSettler.selector, provider, stranger)
        );
        vm.prank(stranger);
        assertEq(escrow.settleBatch(batch), 0);
        assertEq(_lane(user, provider), 100 * USD);
    }

    function test_SettleBatch_RevertsWhen_Empty() public {
        vm.expectRevert(InferenceEscrow.Escrow__EmptyBatch.selector);
        vm.prank(provider);
        escrow.settleBatch(new InferenceEscrow.SignedVoucher[](0));
    }

    // --------------------------------------------------------------- earnings

    function test_WithdrawEarnings_PaysAndZeroes() public {
        InferenceEscrow.Settlement memory s = _settle(_voucher(1, 1_000_000, 1_000_000));
        address payout = makeAddr("payout");
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.EarningsWithdrawn(provider, payout, s.providerAmount);
        vm.prank(provider);
        assertEq(escrow.withdrawEarnings(payout), s.providerAmount);
        assertEq(token.balanceOf(payout), s.providerAmount);
        assertEq(escrow.earningsOf(provider), 0);
        vm.prank(creator);
        escrow.withdrawEarnings(creator);
        assertEq(token.balanceOf(creator), s.royaltyAmount);
        _assertBalanceEqualsOwed();
    }

    function test_WithdrawEarnings_RevertsWhen_NothingOrZeroRecipient() public {
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__NoEarnings.selector, stranger));
        vm.prank(stranger);
        escrow.withdrawEarnings(stranger);
        vm.expectRevert(InferenceEscrow.Escrow__ZeroAddress.selector);
        vm.prank(stranger);
        escrow.withdrawEarnings(address(0));
    }

    function test_Royalty_ALowerRoyaltyPaysWhatThePayerSigned() public {
        // A payer is charged exactly what it signed, even after the royalty fell: the cost it was shown.
        vm.prank(creator);
        uint256 effectiveAt = personas.scheduleRoyalty(personaId, 0);
        vm.warp(effectiveAt - 10 minutes);
        InferenceEscrow.Voucher memory v = _voucher(1, 1_000_000, 0);
        bytes memory sig = _sign(userKey, v);
        vm.warp(effectiveAt);
        vm.prank(provider);
        InferenceEscrow.Settlement memory s = escrow.settle(v, sig);
        assertEq(s.royaltyAmount, ROYALTY);
    }

    function test_Royalty_GoesToThePersonasCurrentHolder() public {
        address buyer = makeAddr("buyer");
        vm.prank(creator);
        personas.transferFrom(creator, buyer, personaId);
        InferenceEscrow.Settlement memory s = _settle(_voucher(1, 1_000_000, 0));
        assertEq(escrow.earningsOf(buyer), s.royaltyAmount);
        assertEq(escrow.earningsOf(creator), 0);
    }

    function test_Royalty_ChangeAppliesOnlyAfterTheDelay() public {
        vm.prank(creator);
        uint256 effectiveAt = personas.scheduleRoyalty(personaId, 1_000_000);
        // A voucher signed now settles, before its expiry, at the royalty in force when it was signed.
        InferenceEscrow.Voucher memory v = _voucher(1, 1_000_000, 0);
        v.expiry = uint64(block.timestamp + MAX_VOUCHER_LIFETIME);
        bytes memory sig = _sign(userKey, v);
        vm.warp(v.expiry);
        assertLt(block.timestamp, effectiveAt);
        vm.prank(provider);
        escrow.settle(v, sig);
        assertEq(escrow.earningsOf(creator), ROYALTY);

        vm.warp(effectiveAt);
        // Once the rise is in force a voucher must carry it: an old rate would shortchange the creator.
        InferenceEscrow.Voucher memory old = _voucher(2, 1_000_000, 0);
        sig = _sign(userKey, old);
        vm.expectRevert(
            abi.encodeWithSelector(InferenceEscrow.Escrow__RoyaltyBelowRate.selector, personaId, ROYALTY, 1_000_000)
        );
        vm.prank(provider);
        escrow.settle(old, sig);
        InferenceEscrow.Voucher memory current = _voucher(2, 1_000_000, 0);
        current.royaltyPerMillion = 1_000_000;
        InferenceEscrow.Settlement memory after_ = _settle(current);
        assertEq(after_.royaltyAmount, 1_000_000);
    }

    // ---------------------------------------------------------- fee and owner

    function test_ProtocolFee_ScheduledPaidOnTopToTheTreasury() public {
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.ProtocolFeeScheduled(250, block.timestamp + ROYALTY_DELAY);
        vm.prank(owner);
        uint256 effectiveAt = escrow.scheduleProtocolFee(250);
        (uint256 current, uint256 next, uint256 at) = escrow.protocolFee();
        assertEq(current, 0);
        assertEq(next, 250);
        assertEq(at, effectiveAt);

        InferenceEscrow.Settlement memory before_ = _settle(_voucher(1, 1_000_000, 1_000_000));
        assertEq(before_.feeAmount, 0);

        vm.warp(effectiveAt);
        InferenceEscrow.Voucher memory unpriced = _voucher(2, 1_000_000, 1_000_000);
        bytes memory sig = _sign(userKey, unpriced);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__FeeBelowRate.selector, 0, 250));
        vm.prank(provider);
        escrow.settle(unpriced, sig);
        InferenceEscrow.Voucher memory priced = _voucher(2, 1_000_000, 1_000_000);
        priced.feeBps = 250;
        InferenceEscrow.Settlement memory s = _settle(priced);
        (uint256 p, uint256 r, uint256 f) = _expectedCost(1_000_000, 1_000_000, ROYALTY, 250);
        assertEq(s.providerAmount, p, "the provider gets exactly its price");
        assertEq(s.royaltyAmount, r, "the creator gets exactly the royalty");
        assertEq(s.feeAmount, f);
        assertEq(escrow.earningsOf(treasury), f);
        (current,,) = escrow.protocolFee();
        assertEq(current, 250);
        _assertBalanceEqualsOwed();
    }

    function test_ScheduleProtocolFee_RevertsWhen_AboveTenPercentOrNotOwner() public {
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__FeeTooHigh.selector, 1_001));
        vm.prank(owner);
        escrow.scheduleProtocolFee(1_001);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        escrow.scheduleProtocolFee(10);
    }

    function test_SetTreasury_RedirectsFutureFeesOnly() public {
        vm.prank(owner);
        escrow.scheduleProtocolFee(1_000);
        vm.warp(block.timestamp + ROYALTY_DELAY);
        InferenceEscrow.Voucher memory v = _voucher(1, 1_000_000, 0);
        v.feeBps = 1_000;
        InferenceEscrow.Settlement memory first = _settle(v);
        address newTreasury = makeAddr("new-treasury");
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.TreasuryChanged(treasury, newTreasury);
        vm.prank(owner);
        escrow.setTreasury(newTreasury);
        v = _voucher(2, 1_000_000, 0);
        v.feeBps = 1_000;
        InferenceEscrow.Settlement memory second = _settle(v);
        assertEq(escrow.earningsOf(treasury), first.feeAmount);
        assertEq(escrow.earningsOf(newTreasury), second.feeAmount);
    }

    function test_SetTreasury_RevertsWhen_ZeroOrNotOwner() public {
        vm.expectRevert(InferenceEscrow.Escrow__ZeroAddress.selector);
        vm.prank(owner);
        escrow.setTreasury(address(0));
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        escrow.setTreasury(stranger);
    }

    function test_Constructor_RevertsWhen_DelaysNotLongerThanVoucherLifetime() public {
        vm.expectRevert(
            abi.encodeWithSelector(InferenceEscrow.Escrow__DelayTooShort.selector, 1 days, MAX_VOUCHER_LIFETIME)
        );
        new InferenceEscrow(token, agents, personas, providers, MAX_VOUCHER_LIFETIME, 1 days, treasury, owner);

        PersonaRegistry quick = new PersonaRegistry(1 hours, MAX_ROYALTY_PER_MILLION);
        vm.expectRevert(
            abi.encodeWithSelector(InferenceEscrow.Escrow__DelayTooShort.selector, 1 hours, MAX_VOUCHER_LIFETIME)
        );
        new InferenceEscrow(token, agents, quick, providers, MAX_VOUCHER_LIFETIME, WITHDRAWAL_DELAY, treasury, owner);
    }

    function test_Constructor_RevertsWhen_DelaysAboveMax() public {
        uint256 maxDelay = escrow.MAX_DELAY();
        vm.expectRevert(
            abi.encodeWithSelector(InferenceEscrow.Escrow__DelayTooLong.selector, maxDelay + 1, maxDelay)
        );
        new InferenceEscrow(token, agents, personas, providers, MAX_VOUCHER_LIFETIME, maxDelay + 1, treasury, owner);

        // PersonaRegistry bounds its own delay; another registry might not.
        IPersonaRegistry slow = IPersonaRegistry(address(new SlowRoyaltyRegistry(maxDelay + 1)));
        vm.expectRevert(
            abi.encodeWithSelector(InferenceEscrow.Escrow__DelayTooLong.selector, maxDelay + 1, maxDelay)
        );
        new InferenceEscrow(token, agents, slow, providers, MAX_VOUCHER_LIFETIME, WITHDRAWAL_DELAY, treasury, owner);
    }

    function test_Constructor_RevertsWhen_ZeroTokenOrTreasury() public {
        vm.expectRevert(InferenceEscrow.Escrow__ZeroAddress.selector);
        new InferenceEscrow(
            token, agents, personas, IProviderRegistry(address(0)), MAX_VOUCHER_LIFETIME, WITHDRAWAL_DELAY, treasury, owner
        );
        vm.expectRevert(InferenceEscrow.Escrow__ZeroAddress.selector);
        new InferenceEscrow(token, agents, personas, providers, MAX_VOUCHER_LIFETIME, WITHDRAWAL_DELAY, address(0), owner);
    }
}
