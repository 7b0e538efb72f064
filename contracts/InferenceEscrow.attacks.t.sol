// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {SoulmeshFixture} from "./test/SoulmeshFixture.sol";
import {InferenceEscrow} from "./InferenceEscrow.sol";

/**
 * @notice The attacks of issue 14 on the escrow, each as the attacker would run it. Each test asserts the safe
 * outcome; against the escrow before lanes (settle callable by anyone, deposits shared by every provider,
 * royalty and fee read at settlement, sessions priced by their latest voucher's rates) each of them failed.
 */
contract InferenceEscrowAttacksTest is SoulmeshFixture {
    uint256 internal constant ROYALTY = 200_000;
    uint128 internal constant PRICE_IN = 500_000;
    uint128 internal constant PRICE_OUT = 1_500_000;

    uint256 internal personaId;
    uint256 internal agentId;

    function setUp() public override {
        super.setUp();
        personaId = _createPersona(creator, ROYALTY, 0);
        agentId = _mintAgent(user, personaId);
        _register(provider);
        _depositAndCommit(user, provider, 100 * USD);
    }

    function _voucher(address to, uint64 session, uint64 inputTokens, uint64 outputTokens)
        internal
        view
        returns (InferenceEscrow.Voucher memory)
    {
        return InferenceEscrow.Voucher({
            payer: user,
            provider: to,
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

    function _sign(InferenceEscrow.Voucher memory v) internal view returns (bytes memory) {
        (uint8 sv, bytes32 r, bytes32 s) = vm.sign(userKey, escrow.hashVoucher(v));
        return abi.encodePacked(r, s, sv);
    }

    function _total(InferenceEscrow.Settlement memory s) internal pure returns (uint256) {
        return s.providerAmount + s.royaltyAmount + s.feeAmount;
    }

    /// @dev The provider's honest voucher settles and pays exactly its cost.
    function _assertPaidInFull(InferenceEscrow.Voucher memory v, bytes memory sig) internal {
        InferenceEscrow.Settlement memory preview = escrow.previewSettle(v);
        uint256 before = escrow.earningsOf(provider);
        vm.prank(provider);
        InferenceEscrow.Settlement memory s = escrow.settle(v, sig);
        assertEq(escrow.earningsOf(provider) - before, preview.providerAmount, "provider paid in full");
        assertEq(s.providerAmount, (uint256(v.inputTokens) * PRICE_IN + uint256(v.outputTokens) * PRICE_OUT) / 1e6);
    }

    /// @dev Attack 1: after being served, the payer settles a voucher of a later session (2^64-1, prices 0)
    /// itself, so that the provider's real vouchers read as superseded.
    function test_Attack1_VoidServedUsage_PayerCannotSettle() public {
        InferenceEscrow.Voucher memory honest = _voucher(provider, 1, 10_000, 5_000);
        bytes memory honestSig = _sign(honest);
        InferenceEscrow.Voucher memory evil = _voucher(provider, type(uint64).max, 1, 0);
        (evil.priceInputPerMillion, evil.priceOutputPerMillion) = (0, 0);
        bytes memory evilSig = _sign(evil);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__NotProviderOrSettler.selector, provider, user));
        vm.prank(user);
        escrow.settle(evil, evilSig);
        // Nor through a batch: the entry is skipped, the channel untouched.
        InferenceEscrow.SignedVoucher[] memory batch = new InferenceEscrow.SignedVoucher[](1);
        batch[0] = InferenceEscrow.SignedVoucher(evil, evilSig);
        vm.prank(user);
        escrow.settleBatch(batch);
        (uint64 session,,,) = escrow.settledOf(user, provider, agentId);
        assertEq(uint256(session), 0, "the payer moved nothing");
        _assertPaidInFull(honest, honestSig);
    }

    /// @dev Attack 1, second form: the same session's totals at price 0. Only the provider holds (and
    /// settles) its session's vouchers, and it settles the one it accepted.
    function test_Attack1_VoidServedUsage_ZeroPriceCopyCannotBeSettledByTheFrontRunner() public {
        InferenceEscrow.Voucher memory honest = _voucher(provider, 1, 10_000, 5_000);
        bytes memory honestSig = _sign(honest);
        InferenceEscrow.Voucher memory cheap = _voucher(provider, 1, 10_000, 5_000);
        (cheap.priceInputPerMillion, cheap.priceOutputPerMillion) = (0, 0);
        bytes memory cheapSig = _sign(cheap);
        vm.expectRevert(
            abi.encodeWithSelector(InferenceEscrow.Escrow__NotProviderOrSettler.selector, provider, stranger)
        );
        vm.prank(stranger);
        escrow.settle(cheap, cheapSig);
        _assertPaidInFull(honest, honestSig);
    }

    /// @dev Attack 2: the payer signs a voucher to an address it controls, priced at its whole deposit,
    /// settles it and withdraws the "earnings" at once, skipping the withdrawal delay.
    function test_Attack2_SkipWithdrawalDelay() public {
        InferenceEscrow.Voucher memory honest = _voucher(provider, 1, 10_000, 5_000);
        bytes memory honestSig = _sign(honest);
        // Its own address is no provider: no lane opens to it.
        _deposit(user, 50 * USD);
        vm.expectRevert(abi.encodeWithSelector(InferenceEscrow.Escrow__NotAProvider.selector, user));
        vm.prank(user);
        escrow.commit(user, 50 * USD);
        // A voucher to itself draws on the (empty) lane user -> user, never on the provider's lane.
        InferenceEscrow.Voucher memory drain = _voucher(user, 1, 1_000_000, 0);
        drain.priceInputPerMillion = uint128(49 * USD);
        bytes memory drainSig = _sign(drain);
        vm.expectRevert();
        vm.prank(user);
        escrow.settle(drain, drainSig);
        // Even a payer that stakes to register itself can only drain its own lane to itself.
        _register(user);
        vm.prank(user);
        escrow.commit(user, 50 * USD);
        vm.prank(user);
        escrow.settle(drain, drainSig);
        assertEq(escrow.earningsOf(user), 49 * USD);
        assertEq(_laneOf(user, provider), 100 * USD, "the provider's lane is untouched");
        _assertPaidInFull(honest, honestSig);
    }

    /// @dev Attack 3 on chain: one deposit backs one provider. A lane committed to one provider pays nothing
    /// to another, however many accept the payer.
    function test_Attack3_OneDepositCannotPayTwoProviders() public {
        address second = makeAddr("second-provider");
        _register(second);
        InferenceEscrow.Voucher memory toSecond = _voucher(second, 1, 10_000, 5_000);
        bytes memory sig = _sign(toSecond);
        vm.expectRevert();
        vm.prank(second);
        escrow.settle(toSecond, sig);
        assertEq(_laneOf(user, provider), 100 * USD);
    }

    /// @dev Attack 4: a third party copies one entry of the provider's pending batch and settles it first, so
    /// that the whole batch reverts. The copy cannot settle; and were an entry settled already (by the
    /// provider's own earlier transaction), the batch skips it and pays the rest.
    function test_Attack4_RevertWholeBatch() public {
        (address user2, uint256 key2) = makeAddrAndKey("user2");
        uint256 agent2 = _mintAgent(user2, personaId);
        _depositAndCommit(user2, provider, 50 * USD);
        InferenceEscrow.SignedVoucher[] memory batch = new InferenceEscrow.SignedVoucher[](2);
        batch[0].voucher = _voucher(provider, 1, 1_000, 1_000);
        batch[0].signature = _sign(batch[0].voucher);
        InferenceEscrow.Voucher memory v2 = _voucher(provider, 1, 2_000, 2_000);
        (v2.payer, v2.agentId) = (user2, agent2);
        (uint8 sv, bytes32 r, bytes32 s) = vm.sign(key2, escrow.hashVoucher(v2));
        batch[1] = InferenceEscrow.SignedVoucher(v2, abi.encodePacked(r, s, sv));

        vm.expectRevert(
            abi.encodeWithSelector(InferenceEscrow.Escrow__NotProviderOrSettler.selector, provider, stranger)
        );
        vm.prank(stranger);
        escrow.settle(batch[1].voucher, batch[1].signature);

        vm.prank(provider);
        escrow.settle(batch[1].voucher, batch[1].signature);
        InferenceEscrow.Settlement memory first = escrow.previewSettle(batch[0].voucher);
        bytes32 key = escrow.channelKey(user2, provider, agent2);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit InferenceEscrow.SettlementSkipped(
            provider,
            user2,
            agent2,
            1,
            abi.encodeWithSelector(InferenceEscrow.Escrow__AlreadySettled.selector, key, uint64(1))
        );
        vm.prank(provider);
        uint256 paid = escrow.settleBatch(batch);
        assertEq(paid, _total(first), "the rest of the batch paid");
    }

    /// @dev Attack 11: a holder schedules 0.2 -> 80 tUSD per million; a voucher signed while the change is
    /// pending settles after it takes effect. The payer pays exactly the royalty it signed; the escrow
    /// never charges the new rate on it.
    function test_Attack11_RoyaltyRaisedUnderSignedVoucher() public {
        vm.prank(creator);
        uint256 effectiveAt = personas.scheduleRoyalty(personaId, 80 * USD);
        vm.warp(effectiveAt - 10 minutes);
        InferenceEscrow.Voucher memory v = _voucher(provider, 1, 10_000, 5_000);
        bytes memory sig = _sign(v);
        uint256 laneBefore = _laneOf(user, provider);
        vm.warp(effectiveAt + 1);
        // Settled after the rise, the voucher can only pay what was signed or nothing at all: the escrow
        // refuses to shortchange the creator, and never charges the payer the new rate.
        vm.expectRevert(
            abi.encodeWithSelector(InferenceEscrow.Escrow__RoyaltyBelowRate.selector, personaId, ROYALTY, 80 * USD)
        );
        vm.prank(provider);
        escrow.settle(v, sig);
        assertEq(_laneOf(user, provider), laneBefore, "the payer paid nothing it did not sign");

        // Settled before the rise (as the provider, which saw the pending change at open, does), it pays
        // exactly the signed royalty.
        vm.warp(effectiveAt - 1);
        vm.prank(provider);
        InferenceEscrow.Settlement memory s = escrow.settle(v, sig);
        assertEq(s.royaltyAmount, (15_000 * ROYALTY) / 1e6);
        assertEq(laneBefore - _laneOf(user, provider), _total(s));
    }

    /// @dev Attack 11, second form: a rise scheduled after a voucher was signed takes effect only after the
    /// voucher expired, however long it lives: a voucher the provider accepted stays payable in full.
    function test_Attack11_RiseScheduledAfterSigningCannotVoidAVoucher() public {
        InferenceEscrow.Voucher memory v = _voucher(provider, 1, 10_000, 5_000);
        v.expiry = uint64(block.timestamp + MAX_VOUCHER_LIFETIME);
        bytes memory sig = _sign(v);
        vm.prank(creator);
        uint256 effectiveAt = personas.scheduleRoyalty(personaId, MAX_ROYALTY_PER_MILLION);
        assertGt(effectiveAt, v.expiry);
        vm.warp(v.expiry);
        _assertPaidInFull(v, sig);
    }

    /// @dev Attack 12: a provider changes its price within a session. The session never costs more than the
    /// dearest voucher the payer signed for it.
    function test_Attack12_PriceChangedWithinSession() public {
        InferenceEscrow.Voucher memory v1 = _voucher(provider, 1, 10_000, 10_000);
        (v1.priceInputPerMillion, v1.priceOutputPerMillion) = (uint128(10 * USD), uint128(10 * USD));
        InferenceEscrow.Voucher memory v2 = _voucher(provider, 1, 20_000, 20_000);
        (v2.priceInputPerMillion, v2.priceOutputPerMillion) = (uint128(1 * USD), uint128(1 * USD));
        bytes memory s1 = _sign(v1);
        bytes memory s2 = _sign(v2);
        InferenceEscrow.Settlement memory alone1 = escrow.previewSettle(v1);
        InferenceEscrow.Settlement memory alone2 = escrow.previewSettle(v2);
        uint256 dearest = _total(alone1) > _total(alone2) ? _total(alone1) : _total(alone2);
        uint256 before = _laneOf(user, provider);
        vm.startPrank(provider);
        escrow.settle(v1, s1);
        InferenceEscrow.Settlement memory second = escrow.settle(v2, s2);
        vm.stopPrank();
        assertEq(before - _laneOf(user, provider), dearest, "the session cost its dearest voucher");
        assertEq(second.providerAmount, 0, "the cut came off the provider's share");
        (,,, uint256 paid) = escrow.settledOf(user, provider, agentId);
        assertEq(paid, dearest);
    }

    /// @dev Attack 12, the other way round: a rise mid-session reprices only the tokens after it, never those
    /// already settled, and the session costs less than the dearer voucher alone.
    function test_Attack12_PriceRaisedWithinSessionRepricesOnlyNewTokens() public {
        InferenceEscrow.Voucher memory v1 = _voucher(provider, 1, 10_000, 10_000);
        InferenceEscrow.Voucher memory v2 = _voucher(provider, 1, 20_000, 20_000);
        (v2.priceInputPerMillion, v2.priceOutputPerMillion) = (uint128(10 * USD), uint128(10 * USD));
        bytes memory s1 = _sign(v1);
        bytes memory s2 = _sign(v2);
        InferenceEscrow.Settlement memory alone1 = escrow.previewSettle(v1);
        InferenceEscrow.Settlement memory alone2 = escrow.previewSettle(v2);
        uint256 before = _laneOf(user, provider);
        vm.startPrank(provider);
        escrow.settle(v1, s1);
        escrow.settle(v2, s2);
        vm.stopPrank();
        uint256 newTokens = (10_000 * 10 * USD + 10_000 * 10 * USD) / 1e6 + (20_000 * ROYALTY) / 1e6;
        assertEq(before - _laneOf(user, provider), _total(alone1) + newTokens);
        assertLt(before - _laneOf(user, provider), _total(alone2));
    }

    /// @dev I1 in one test: after the provider accepted a voucher, nothing the payer does before it expires
    /// (withdraw, release the lane, commit elsewhere, settle to a provider it controls) stops it paying.
    function test_ProviderSafety_NothingThePayerDoesVoidsAnAcceptedVoucher() public {
        InferenceEscrow.Voucher memory honest = _voucher(provider, 7, 100_000, 50_000);
        honest.expiry = uint64(block.timestamp + MAX_VOUCHER_LIFETIME);
        bytes memory sig = _sign(honest);
        address accomplice = makeAddr("accomplice");
        _register(accomplice);
        _deposit(user, 10 * USD);
        vm.startPrank(user);
        escrow.requestWithdrawal(10 * USD);
        escrow.requestRelease(provider);
        escrow.commit(accomplice, 10 * USD);
        vm.stopPrank();
        InferenceEscrow.Voucher memory collude = _voucher(accomplice, type(uint64).max, 1_000_000, 0);
        collude.priceInputPerMillion = uint128(9 * USD);
        bytes memory colludeSig = _sign(collude);
        vm.prank(accomplice);
        escrow.settle(collude, colludeSig);
        vm.warp(honest.expiry);
        vm.expectRevert();
        vm.prank(user);
        escrow.completeWithdrawal();
        vm.expectRevert();
        vm.prank(user);
        escrow.completeRelease(provider);
        _assertPaidInFull(honest, sig);
    }

    function _laneOf(address payer, address to) internal view returns (uint256 amount) {
        (amount,) = escrow.laneOf(payer, to);
    }
}
