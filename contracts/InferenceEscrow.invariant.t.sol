// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {Vm} from "./test/Vm.sol";
import {SoulmeshFixture} from "./test/SoulmeshFixture.sol";
import {InferenceEscrow} from "./InferenceEscrow.sol";
import {PersonaRegistry} from "./PersonaRegistry.sol";
import {TestStablecoin} from "./token/TestStablecoin.sol";

/**
 * @notice Drives the escrow through random sequences of what honest payers and providers do, side by side
 * with adversaries: payers that try to settle (void) their own bills or escape with committed funds, a
 * front-runner that copies the providers' vouchers, a second "provider" that colludes with the payers,
 * creators that change royalties and an owner that changes the fee.
 *
 * Honest actions call the escrow directly: the invariant runs with failOnRevert, so any honest action that
 * reverts (above all, an honest provider settling a voucher it accepted) fails the run. Adversarial actions
 * are tried and their reverts swallowed; one that succeeds where it must not counts as a breach.
 */
contract EscrowHandler {
    Vm private constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    /// @dev What an honest provider holds of a channel: the latest voucher it accepted, not yet settled.
    struct Accepted {
        InferenceEscrow.Voucher voucher;
        bytes signature;
        bool pending;
    }

    InferenceEscrow public immutable escrow;
    TestStablecoin public immutable token;
    PersonaRegistry public immutable personas;
    address public immutable owner;
    address public immutable colluder;
    address public immutable frontRunner;

    address[] public users;
    uint256[] private keys;
    uint256[] public agentOf;
    uint256[] public personaOfUser;
    address[] public providers;
    address[] public creators;

    uint256 public ghostIn;
    uint256 public ghostOut;
    uint256 public acceptedCount;
    uint256 public honestSettlements;
    /// @dev Adversarial actions that succeeded where they must not.
    uint256 public breaches;
    mapping(uint256 user => mapping(uint256 provider => Accepted)) private _accepted;

    constructor(
        InferenceEscrow escrow_,
        TestStablecoin token_,
        PersonaRegistry personas_,
        address owner_,
        address colluder_,
        address frontRunner_,
        address[] memory users_,
        uint256[] memory keys_,
        uint256[] memory agents_,
        uint256[] memory personasOfUsers_,
        address[] memory providers_,
        address[] memory creators_
    ) {
        (escrow, token, personas, owner, colluder, frontRunner) =
            (escrow_, token_, personas_, owner_, colluder_, frontRunner_);
        (users, keys, agentOf, personaOfUser, providers, creators) =
            (users_, keys_, agents_, personasOfUsers_, providers_, creators_);
    }

    function userCount() external view returns (uint256) {
        return users.length;
    }

    function providerCount() external view returns (uint256) {
        return providers.length;
    }

    // ---------------------------------------------------------------- honest payers

    function deposit(uint256 who, uint256 amount) external {
        address user = users[who % users.length];
        amount = 1 + (amount % 1_000e6);
        token.mint(user, amount);
        vm.startPrank(user);
        token.approve(address(escrow), amount);
        escrow.deposit(amount);
        vm.stopPrank();
        ghostIn += amount;
    }

    function commit(uint256 who, uint256 whom, uint256 amount) external {
        address user = users[who % users.length];
        uint256 free = escrow.depositOf(user);
        if (free == 0) return;
        vm.prank(user);
        escrow.commit(providers[whom % providers.length], 1 + (amount % free));
    }

    /// @dev A new payer's first step with a provider: deposit and commit in one transaction.
    function depositAndCommit(uint256 who, uint256 whom, uint256 amount) external {
        address user = users[who % users.length];
        amount = 1 + (amount % 1_000e6);
        token.mint(user, amount);
        vm.startPrank(user);
        token.approve(address(escrow), amount);
        escrow.depositAndCommit(providers[whom % providers.length], amount);
        vm.stopPrank();
        ghostIn += amount;
    }

    // ------------------------------------------------------------- honest providers

    /**
     * @dev Provider `whom` serves payer `who` a turn and accepts its voucher, after the checks a provider
     * makes: the lane covers what the voucher adds, no release completes before it expires, and it carries
     * at least every rate that can be in force before it expires. A refusal is not a failure.
     */
    function accept(uint256 who, uint256 whom, bool newSession, uint256 moreIn, uint256 moreOut) external {
        uint256 u = who % users.length;
        uint256 p = whom % providers.length;
        Accepted storage a = _accepted[u][p];
        if (newSession && a.pending) _settle(u, p); // a provider settles a channel's sessions in order
        (uint64 session, uint64 baseIn, uint64 baseOut, uint256 paid) =
            escrow.settledOf(users[u], providers[p], agentOf[u]);
        // A session keeps its rates and expiry: go on with the last one accepted while it has time left.
        bool goOn = a.pending || (!newSession && session != 0 && a.voucher.session == session
            && a.voucher.expiry > block.timestamp + 10 minutes);
        if (a.pending) {
            if (session != a.voucher.session) paid = 0;
            (session, baseIn, baseOut) = (a.voucher.session, a.voucher.inputTokens, a.voucher.outputTokens);
        } else if (!goOn) {
            (session, baseIn, baseOut, paid) = (session + 1, 0, 0, 0);
        }
        uint64 expiry = uint64(block.timestamp + 1 hours);
        InferenceEscrow.Voucher memory v = InferenceEscrow.Voucher({
            payer: users[u],
            provider: providers[p],
            agentId: agentOf[u],
            session: session,
            inputTokens: baseIn + uint64(1 + (moreIn % 200_000)),
            outputTokens: baseOut + uint64(moreOut % 50_000),
            priceInputPerMillion: goOn ? a.voucher.priceInputPerMillion : uint128(100_000 + (moreIn % 3_000_000)),
            priceOutputPerMillion: goOn ? a.voucher.priceOutputPerMillion : uint128(100_000 + (moreOut % 9_000_000)),
            royaltyPerMillion: goOn ? a.voucher.royaltyPerMillion : uint96(_royaltyFor(u, expiry)),
            feeBps: goOn ? a.voucher.feeBps : uint16(_feeFor(expiry)),
            expiry: goOn ? a.voucher.expiry : expiry
        });
        if (v.royaltyPerMillion < _royaltyFor(u, v.expiry) || v.feeBps < _feeFor(v.expiry)) return;
        (uint256 lane, uint256 releaseAt) = escrow.laneOf(users[u], providers[p]);
        if (releaseAt != 0 && releaseAt <= v.expiry) return;
        uint256 cumulative = _cost(v, v.inputTokens, v.outputTokens);
        if (cumulative - paid > lane) return;
        (uint8 sv, bytes32 r, bytes32 s) = vm.sign(keys[u], escrow.hashVoucher(v));
        (a.voucher, a.signature, a.pending) = (v, abi.encodePacked(r, s, sv), true);
        acceptedCount++;
    }

    /// @dev Provider `whom` settles every voucher it accepted: each must pay exactly its price.
    function settleAll(uint256 whom) external {
        uint256 p = whom % providers.length;
        for (uint256 u; u < users.length; ++u) {
            if (_accepted[u][p].pending) _settle(u, p);
        }
    }

    /// @dev Time passes; honest providers settle first whatever would expire meanwhile.
    function warp(uint256 seconds_) external {
        for (uint256 p; p < providers.length; ++p) {
            for (uint256 u; u < users.length; ++u) {
                if (_accepted[u][p].pending) _settle(u, p);
            }
        }
        vm.warp(block.timestamp + (seconds_ % 3 days));
    }

    function withdrawEarnings(uint256 who) external {
        address[] memory everyone = _earners();
        address account = everyone[who % everyone.length];
        uint256 amount = escrow.earningsOf(account);
        if (amount == 0) return;
        vm.prank(account);
        escrow.withdrawEarnings(account);
        ghostOut += amount;
    }

    // ------------------------------------------------------------------ adversaries

    /// @dev A payer signs a later session (or the same one at price 0) and settles it itself.
    function payerVoidsItsBill(uint256 who, uint256 whom, uint64 session, bool batch) external {
        uint256 u = who % users.length;
        uint256 p = whom % providers.length;
        InferenceEscrow.Voucher memory v = InferenceEscrow.Voucher({
            payer: users[u],
            provider: providers[p],
            agentId: agentOf[u],
            session: session == 0 ? type(uint64).max : session,
            inputTokens: 1,
            outputTokens: 0,
            priceInputPerMillion: 0,
            priceOutputPerMillion: 0,
            royaltyPerMillion: uint96(MAX_ROYALTY),
            feeBps: 1_000,
            expiry: uint64(block.timestamp + 1 hours)
        });
        (uint8 sv, bytes32 r, bytes32 s) = vm.sign(keys[u], escrow.hashVoucher(v));
        bytes memory sig = abi.encodePacked(r, s, sv);
        vm.startPrank(users[u]);
        if (batch) {
            InferenceEscrow.SignedVoucher[] memory b = new InferenceEscrow.SignedVoucher[](1);
            b[0] = InferenceEscrow.SignedVoucher(v, sig);
            try escrow.settleBatch(b) returns (uint256 paid) {
                if (paid != 0) breaches++;
            } catch {}
        } else {
            try escrow.settle(v, sig) {
                breaches++;
            } catch {}
        }
        vm.stopPrank();
    }

    /// @dev A third party copies a voucher an honest provider holds and settles it first.
    function frontRun(uint256 who, uint256 whom) external {
        Accepted storage a = _accepted[who % users.length][whom % providers.length];
        if (!a.pending) return;
        vm.prank(frontRunner);
        try escrow.settle(a.voucher, a.signature) {
            breaches++;
        } catch {}
    }

    /// @dev A payer commits to a provider it colludes with and drains that lane through it.
    function colludingProviderDrains(uint256 who, uint256 amount) external {
        uint256 u = who % users.length;
        uint256 free = escrow.depositOf(users[u]);
        if (free == 0) return;
        amount = 1 + (amount % free);
        vm.prank(users[u]);
        escrow.commit(colluder, amount);
        (uint64 session,,,) = escrow.settledOf(users[u], colluder, agentOf[u]);
        InferenceEscrow.Voucher memory v = InferenceEscrow.Voucher({
            payer: users[u],
            provider: colluder,
            agentId: agentOf[u],
            session: session + 1,
            inputTokens: 1_000_000,
            outputTokens: 0,
            priceInputPerMillion: uint128(amount),
            priceOutputPerMillion: 0,
            royaltyPerMillion: uint96(_royaltyFor(u, block.timestamp + 1 hours)),
            feeBps: uint16(_feeFor(block.timestamp + 1 hours)),
            expiry: uint64(block.timestamp + 1 hours)
        });
        (uint8 sv, bytes32 r, bytes32 s) = vm.sign(keys[u], escrow.hashVoucher(v));
        vm.prank(colluder);
        try escrow.settle(v, abi.encodePacked(r, s, sv)) {} catch {} // the royalty may not fit: then nothing moves
    }

    /**
     * @dev A payer tries to leave with what it committed, every way at once: it asks for every lane back and
     * tries to complete the releases and its withdrawal at once; then (on `late`) it completes what is due.
     */
    function payerEscapes(uint256 who, uint256 amount, bool late) external {
        address user = users[who % users.length];
        vm.startPrank(user);
        for (uint256 p; p < providers.length; ++p) {
            if (!late) try escrow.requestRelease(providers[p]) {} catch {}
            if (amount % 2 == 0) {
                try escrow.completeRelease(providers[p]) {} catch {}
            } else {
                uint256 was = token.balanceOf(user);
                try escrow.completeReleaseAndWithdraw(providers[p]) {} catch {}
                ghostOut += token.balanceOf(user) - was;
            }
        }
        uint256 free = escrow.depositOf(user);
        if (!late && free != 0) escrow.requestWithdrawal(1 + (amount % free));
        uint256 before = token.balanceOf(user);
        try escrow.completeWithdrawal() {} catch {}
        ghostOut += token.balanceOf(user) - before;
        vm.stopPrank();
    }

    /// @dev A payer that changed its mind keeps its lane with a provider.
    function payerStays(uint256 who, uint256 whom) external {
        vm.prank(users[who % users.length]);
        try escrow.cancelRelease(providers[whom % providers.length]) {} catch {}
    }

    function scheduleRoyalty(uint256 who, uint256 royalty) external {
        uint256 c = who % creators.length;
        vm.prank(creators[c]);
        personas.scheduleRoyalty(c + 1, royalty % 3 == 0 ? royalty % MAX_ROYALTY : royalty % 2_000_000);
    }

    function scheduleFee(uint256 bps) external {
        vm.prank(owner);
        escrow.scheduleProtocolFee(bps % 1_001);
    }

    // ---------------------------------------------------------------------- views

    function earners() external view returns (address[] memory) {
        return _earners();
    }

    uint256 private constant MAX_ROYALTY = 1_000e6;

    function _earners() private view returns (address[] memory everyone) {
        everyone = new address[](providers.length + creators.length + 3);
        for (uint256 i; i < providers.length; ++i) everyone[i] = providers[i];
        for (uint256 i; i < creators.length; ++i) everyone[providers.length + i] = creators[i];
        everyone[everyone.length - 3] = escrow.treasury();
        everyone[everyone.length - 2] = colluder;
        everyone[everyone.length - 1] = frontRunner;
    }

    /// @dev The highest royalty that can be in force before `expiry`: what an honest client signs.
    function _royaltyFor(uint256 u, uint256 expiry) private view returns (uint256) {
        (uint256 current, uint256 next, uint256 effectiveAt) = personas.royaltyScheduleOf(personaOfUser[u]);
        return effectiveAt != 0 && effectiveAt <= expiry && next > current ? next : current;
    }

    function _feeFor(uint256 expiry) private view returns (uint256) {
        (uint256 current, uint256 next, uint256 effectiveAt) = escrow.protocolFee();
        return effectiveAt != 0 && effectiveAt <= expiry && next > current ? next : current;
    }

    function _cost(InferenceEscrow.Voucher memory v, uint256 inputTokens, uint256 outputTokens)
        private
        pure
        returns (uint256)
    {
        uint256 providerAmount = (inputTokens * v.priceInputPerMillion + outputTokens * v.priceOutputPerMillion) / 1e6;
        uint256 royaltyAmount = ((inputTokens + outputTokens) * v.royaltyPerMillion) / 1e6;
        return providerAmount + royaltyAmount + ((providerAmount + royaltyAmount) * v.feeBps) / 10_000;
    }

    /// @dev Settles the accepted voucher of channel (u, p) as its provider; reverts (failing the run) unless
    /// it pays the provider exactly its price for the new tokens and takes exactly the voucher's cost.
    function _settle(uint256 u, uint256 p) private {
        Accepted storage a = _accepted[u][p];
        InferenceEscrow.Voucher memory v = a.voucher;
        (uint64 session, uint64 settledIn, uint64 settledOut, uint256 paid) =
            escrow.settledOf(v.payer, v.provider, v.agentId);
        if (session != v.session) (settledIn, settledOut, paid) = (0, 0, 0);
        uint256 providerBefore = (uint256(settledIn) * v.priceInputPerMillion + uint256(settledOut) * v.priceOutputPerMillion) / 1e6;
        uint256 providerNow = (uint256(v.inputTokens) * v.priceInputPerMillion + uint256(v.outputTokens) * v.priceOutputPerMillion) / 1e6;
        (uint256 laneBefore,) = escrow.laneOf(v.payer, v.provider);
        uint256 earnedBefore = escrow.earningsOf(v.provider);
        vm.prank(v.provider);
        escrow.settle(v, a.signature);
        (uint256 laneAfter,) = escrow.laneOf(v.payer, v.provider);
        require(escrow.earningsOf(v.provider) - earnedBefore == providerNow - providerBefore, "provider paid in full");
        require(laneBefore - laneAfter == _cost(v, v.inputTokens, v.outputTokens) - paid, "payer paid what it signed");
        a.pending = false;
        honestSettlements++;
    }
}

/// @notice The escrow never owes more or less than it holds, and honest providers are always paid, whatever
/// payers, third parties, creators and the owner do.
contract InferenceEscrowInvariantTest is SoulmeshFixture {
    EscrowHandler internal handler;

    function setUp() public override {
        super.setUp();
        address[] memory creators = new address[](2);
        creators[0] = creator;
        creators[1] = makeAddr("creator-2");
        _createPersona(creators[0], 200_000, 0);
        _createPersona(creators[1], 1_000_000, 0);

        address[] memory users = new address[](3);
        uint256[] memory keys = new uint256[](3);
        uint256[] memory agentIds = new uint256[](3);
        uint256[] memory personaIds = new uint256[](3);
        for (uint256 i; i < 3; ++i) {
            (users[i], keys[i]) = makeAddrAndKey(string.concat("payer-", vm.toString(i)));
            personaIds[i] = (i % 2) + 1;
            agentIds[i] = _mintAgent(users[i], personaIds[i]);
        }
        address[] memory provs = new address[](2);
        provs[0] = provider;
        provs[1] = makeAddr("provider-2");
        _register(provs[0]);
        _register(provs[1]);
        address colluder = makeAddr("colluder");
        _register(colluder);

        handler = new EscrowHandler(
            escrow, token, personas, owner, colluder, stranger, users, keys, agentIds, personaIds, provs, creators
        );
        // The handler mints test tokens for deposits.
        token.transferOwnership(address(handler));
        targetContract(address(handler));
    }

    function _owed() internal view returns (uint256 owed) {
        address colluder = handler.colluder();
        for (uint256 i; i < handler.userCount(); ++i) {
            address u = handler.users(i);
            owed += escrow.depositOf(u);
            for (uint256 p; p < handler.providerCount(); ++p) {
                (uint256 lane,) = escrow.laneOf(u, handler.providers(p));
                owed += lane;
            }
            (uint256 colludingLane,) = escrow.laneOf(u, colluder);
            owed += colludingLane;
        }
        address[] memory earners = handler.earners();
        for (uint256 i; i < earners.length; ++i) owed += escrow.earningsOf(earners[i]);
    }

    /// @dev I4: solvency.
    /// hardhat-config: invariant.failOnRevert = true
    function invariant_BalanceEqualsDepositsPlusLanesPlusEarnings() public view {
        assertEq(token.balanceOf(address(escrow)), _owed(), "balance == deposits + lanes + earnings");
    }

    /// hardhat-config: invariant.failOnRevert = true
    function invariant_TokensInMinusOutEqualBalance() public view {
        assertEq(handler.ghostIn() - handler.ghostOut(), token.balanceOf(address(escrow)), "conservation");
    }

    /// @dev I1: no payer or third party ever settled a voucher (an honest provider's settlements that
    /// revert fail the run on their own, through failOnRevert).
    /// hardhat-config: invariant.failOnRevert = true
    function invariant_NoAdversaryEverSettles() public view {
        assertEq(handler.breaches(), 0, "an adversary settled");
    }

    /// @dev The invariants mean something only if the handler's actions do what they say: this drives each
    /// once, honest vouchers being paid while adversaries act around them.
    /// @dev The escape the invariant run looks for, spelt out: a payer served by a provider asks for everything
    /// back at once; the voucher the provider accepted is still paid in full.
    function test_PayerEscapingDoesNotVoidAnAcceptedVoucher() public {
        handler.depositAndCommit(0, 0, 10e6);
        handler.accept(0, 0, true, 100_000, 20_000);
        handler.payerEscapes(0, 5e6, false);
        handler.warp(1 hours - 1);
        assertEq(handler.honestSettlements(), 1);
        handler.payerEscapes(0, 0, true);
        invariant_BalanceEqualsDepositsPlusLanesPlusEarnings();
    }

    function test_HandlerActionsSucceed() public {
        handler.deposit(0, 500e6);
        handler.deposit(1, 500e6);
        handler.deposit(2, 500e6);
        handler.commit(0, 0, 300e6 - 1);
        handler.depositAndCommit(1, 1, 300e6 - 1);
        handler.accept(0, 0, true, 10_000, 5_000);
        handler.accept(0, 0, false, 10_000, 5_000);
        handler.accept(1, 1, true, 10_000, 5_000);
        assertEq(handler.acceptedCount(), 3);
        handler.frontRun(0, 0);
        handler.payerVoidsItsBill(0, 0, 0, false);
        handler.payerVoidsItsBill(1, 1, 5, true);
        handler.payerEscapes(0, 0, false);
        handler.payerStays(0, 1);
        handler.colludingProviderDrains(2, 100e6);
        handler.scheduleRoyalty(1, 5);
        handler.scheduleFee(100);
        handler.settleAll(0);
        handler.warp(3 days - 1);
        handler.payerEscapes(0, 0, true);
        handler.payerEscapes(2, 1e6, false);
        handler.withdrawEarnings(0);
        assertEq(handler.honestSettlements(), 2);
        assertEq(handler.breaches(), 0);
        assertGt(handler.ghostOut(), 0);
        invariant_BalanceEqualsDepositsPlusLanesPlusEarnings();
        invariant_TokensInMinusOutEqualBalance();
    }
}
