// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {IERC721} from "@openzeppelin/contracts/token/ERC721/IERC721.sol";
import {IERC721Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {SoulmeshTest} from "./test/SoulmeshTest.sol";
import {SoulmeshFixture} from "./test/SoulmeshFixture.sol";
import {PersonaRegistry} from "./PersonaRegistry.sol";
import {IPersonaRegistry} from "./interfaces/IPersonaRegistry.sol";
import {Scheduled} from "./libraries/Scheduled.sol";

contract PersonaRegistryTest is SoulmeshFixture {
    uint256 internal constant ROYALTY = 200_000;
    uint256 internal constant PRICE = 5 * USD;
    uint256 internal constant MAX_ROYALTY = MAX_ROYALTY_PER_MILLION;
    string internal constant MANIFEST = "bafy-manifest";
    bytes32 internal constant OTHER_BASE_MODEL = keccak256("mistral-7b.gguf");

    // ------------------------------------------------------------- helpers

    function _assertPersona(
        uint256 id,
        string memory manifestCid,
        bytes32 adapter,
        bytes32 baseModel,
        uint256 adoptionPrice
    ) internal view {
        PersonaRegistry.Persona memory p = personas.personaOf(id);
        assertEq(p.manifestCid, manifestCid, "manifestCid");
        assertEq(p.adapterSha256, adapter, "adapterSha256");
        assertEq(p.baseModelHash, baseModel, "baseModelHash");
        assertEq(p.adoptionPrice, adoptionPrice, "adoptionPrice");
    }

    function _assertRoyalty(uint256 id, address holder, uint256 royalty) internal view {
        (address h, uint256 r) = personas.royaltyOf(id);
        assertEq(h, holder, "royalty holder");
        assertEq(r, royalty, "royalty in force");
    }

    function _assertSchedule(uint256 id, uint256 current, uint256 next, uint256 effectiveAt) internal view {
        (uint256 c, uint256 n, uint256 e) = personas.royaltyScheduleOf(id);
        assertEq(c, current, "schedule current");
        assertEq(n, next, "schedule next");
        assertEq(e, effectiveAt, "schedule effectiveAt");
    }

    function _schedule(uint256 id, uint256 royalty) internal returns (uint256) {
        vm.prank(creator);
        return personas.scheduleRoyalty(id, royalty);
    }

    // ------------------------------------------------------------- constructor and views

    function test_Constructor_SetsNameSymbolAndDelay() public view {
        assertEq(personas.name(), "Soulmesh Persona");
        assertEq(personas.symbol(), "SOULP");
        assertEq(personas.royaltyDelay(), ROYALTY_DELAY);
        assertEq(personas.totalPersonas(), 0);
        assertTrue(personas.supportsInterface(type(IERC721).interfaceId));
    }

    function test_Constructor_RevertsWhen_MaxRoyaltyAboveUint96() public {
        new PersonaRegistry(ROYALTY_DELAY, type(uint96).max);
        vm.expectRevert(
            abi.encodeWithSelector(
                PersonaRegistry.Persona__RoyaltyTooHigh.selector, uint256(type(uint96).max) + 1, type(uint96).max
            )
        );
        new PersonaRegistry(ROYALTY_DELAY, uint256(type(uint96).max) + 1);
    }

    /// @dev Attack 11 of issue 14: a holder could set uint96's maximum and make every voucher of the
    /// persona unsettleable. The cap fixed at deployment refuses it.
    function test_Attack_RoyaltyRaisedToUint96MaxIsRefused() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        assertEq(personas.maxRoyaltyPerMillion(), MAX_ROYALTY);
        vm.expectRevert(
            abi.encodeWithSelector(PersonaRegistry.Persona__RoyaltyTooHigh.selector, type(uint96).max, MAX_ROYALTY)
        );
        vm.prank(creator);
        personas.scheduleRoyalty(id, type(uint96).max);
    }

    function test_Constructor_RevertsWhen_DelayZero() public {
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__ZeroDelay.selector));
        new PersonaRegistry(0, MAX_ROYALTY);
    }

    function test_Constructor_RevertsWhen_DelayAboveMax() public {
        uint256 maxDelay = personas.MAX_DELAY();
        new PersonaRegistry(maxDelay, MAX_ROYALTY);
        vm.expectRevert(
            abi.encodeWithSelector(PersonaRegistry.Persona__DelayTooLong.selector, maxDelay + 1, maxDelay)
        );
        new PersonaRegistry(maxDelay + 1, MAX_ROYALTY);
        vm.expectRevert(
            abi.encodeWithSelector(PersonaRegistry.Persona__DelayTooLong.selector, type(uint256).max, maxDelay)
        );
        new PersonaRegistry(type(uint256).max, MAX_ROYALTY);
    }

    function test_Views_RevertWhen_PersonaUnknown() public {
        _createPersona(creator, ROYALTY, PRICE);
        uint256[2] memory ids = [uint256(0), 2];
        for (uint256 i; i < ids.length; ++i) {
            bytes memory err = abi.encodeWithSelector(PersonaRegistry.Persona__UnknownPersona.selector, ids[i]);
            vm.expectRevert(err);
            personas.royaltyOf(ids[i]);
            vm.expectRevert(err);
            personas.adoptionTermsOf(ids[i]);
            vm.expectRevert(err);
            personas.personaOf(ids[i]);
            vm.expectRevert(err);
            personas.royaltyScheduleOf(ids[i]);
        }
    }

    // ------------------------------------------------------------- createPersona

    function test_CreatePersona_MintsToCallerAndStoresRecord() public {
        vm.prank(creator);
        uint256 id = personas.createPersona(MANIFEST, ADAPTER, BASE_MODEL, ROYALTY, PRICE);

        assertEq(id, 1);
        assertEq(personas.ownerOf(id), creator);
        assertEq(personas.balanceOf(creator), 1);
        assertEq(personas.totalPersonas(), 1);
        _assertPersona(id, MANIFEST, ADAPTER, BASE_MODEL, PRICE);
        _assertRoyalty(id, creator, ROYALTY);
        _assertSchedule(id, ROYALTY, ROYALTY, 0);
        (address holder, uint256 price) = personas.adoptionTermsOf(id);
        assertEq(holder, creator);
        assertEq(price, PRICE);
    }

    function test_CreatePersona_AssignsSequentialIdsPerCall() public {
        uint256 a = _createPersona(creator, ROYALTY, PRICE);
        uint256 b = _createPersona(stranger, 1, 2);
        uint256 c = _createPersona(creator, 3, 4);
        assertEq(a, 1);
        assertEq(b, 2);
        assertEq(c, 3);
        assertEq(personas.totalPersonas(), 3);
        assertEq(personas.ownerOf(b), stranger);
        assertEq(personas.balanceOf(creator), 2);
        _assertRoyalty(b, stranger, 1);
        _assertPersona(c, MANIFEST, ADAPTER, BASE_MODEL, 4);
    }

    function test_CreatePersona_AllowsNoAdapterZeroRoyaltyAndFreeAdoption() public {
        vm.prank(creator);
        uint256 id = personas.createPersona(MANIFEST, bytes32(0), BASE_MODEL, 0, 0);
        _assertPersona(id, MANIFEST, bytes32(0), BASE_MODEL, 0);
        _assertRoyalty(id, creator, 0);
        _assertSchedule(id, 0, 0, 0);
    }

    function test_CreatePersona_AcceptsLargestRoyaltyAndPrice() public {
        vm.prank(creator);
        uint256 id = personas.createPersona(MANIFEST, ADAPTER, BASE_MODEL, MAX_ROYALTY, type(uint256).max);
        _assertRoyalty(id, creator, MAX_ROYALTY);
        _assertPersona(id, MANIFEST, ADAPTER, BASE_MODEL, type(uint256).max);
    }

    function test_CreatePersona_EmitsPersonaCreatedAndTransfer() public {
        vm.expectEmit(true, true, true, true, address(personas));
        emit PersonaRegistry.PersonaCreated(1, creator, MANIFEST, ADAPTER, BASE_MODEL, ROYALTY, PRICE);
        vm.expectEmit(true, true, true, true, address(personas));
        emit IERC721.Transfer(address(0), creator, 1);
        vm.prank(creator);
        personas.createPersona(MANIFEST, ADAPTER, BASE_MODEL, ROYALTY, PRICE);
    }

    function test_CreatePersona_RevertsWhen_ManifestEmpty() public {
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__EmptyManifest.selector));
        vm.prank(creator);
        personas.createPersona("", ADAPTER, BASE_MODEL, ROYALTY, PRICE);
        assertEq(personas.totalPersonas(), 0);
        assertEq(personas.balanceOf(creator), 0);
    }

    function test_CreatePersona_RevertsWhen_BaseModelMissing() public {
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__MissingBaseModel.selector));
        vm.prank(creator);
        personas.createPersona(MANIFEST, ADAPTER, bytes32(0), ROYALTY, PRICE);
        assertEq(personas.totalPersonas(), 0);
        assertEq(personas.balanceOf(creator), 0);
    }

    function test_CreatePersona_RevertsWhen_RoyaltyTooHigh() public {
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__RoyaltyTooHigh.selector, MAX_ROYALTY + 1, MAX_ROYALTY));
        vm.prank(creator);
        personas.createPersona(MANIFEST, ADAPTER, BASE_MODEL, MAX_ROYALTY + 1, PRICE);
        assertEq(personas.totalPersonas(), 0);
        // The failed call must not have consumed an id.
        assertEq(_createPersona(creator, ROYALTY, PRICE), 1);
    }

    function testFuzz_CreatePersona_RevertsWhen_RoyaltyTooHigh(uint256 royalty) public {
        royalty = bound(royalty, MAX_ROYALTY + 1, type(uint256).max);
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__RoyaltyTooHigh.selector, royalty, MAX_ROYALTY));
        vm.prank(creator);
        personas.createPersona(MANIFEST, ADAPTER, BASE_MODEL, royalty, PRICE);
    }

    // ------------------------------------------------------------- updatePersona

    function test_UpdatePersona_ReplacesManifestAdapterAndBaseModel() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        vm.prank(creator);
        personas.updatePersona(id, "bafy-v2", bytes32(0), OTHER_BASE_MODEL);

        _assertPersona(id, "bafy-v2", bytes32(0), OTHER_BASE_MODEL, PRICE);
        _assertRoyalty(id, creator, ROYALTY);
        _assertSchedule(id, ROYALTY, ROYALTY, 0);
        assertEq(personas.ownerOf(id), creator);
    }

    function test_UpdatePersona_EmitsPersonaUpdated() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        vm.expectEmit(true, true, true, true, address(personas));
        emit PersonaRegistry.PersonaUpdated(id, "bafy-v2", ADAPTER, OTHER_BASE_MODEL);
        vm.prank(creator);
        personas.updatePersona(id, "bafy-v2", ADAPTER, OTHER_BASE_MODEL);
    }

    function test_UpdatePersona_RevertsWhen_PersonaUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__UnknownPersona.selector, 1));
        vm.prank(creator);
        personas.updatePersona(1, "bafy-v2", ADAPTER, BASE_MODEL);
    }

    function test_UpdatePersona_RevertsWhen_CallerNotHolder() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__NotHolder.selector, id, stranger));
        vm.prank(stranger);
        personas.updatePersona(id, "bafy-evil", ADAPTER, BASE_MODEL);
        _assertPersona(id, MANIFEST, ADAPTER, BASE_MODEL, PRICE);
    }

    function test_UpdatePersona_RevertsWhen_CallerOnlyApprovedForToken() public {
        // ERC-721 approval lets an operator move the persona, not edit it: only the holder edits.
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        vm.prank(creator);
        personas.approve(stranger, id);
        vm.prank(creator);
        personas.setApprovalForAll(user, true);

        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__NotHolder.selector, id, stranger));
        vm.prank(stranger);
        personas.updatePersona(id, "bafy-v2", ADAPTER, BASE_MODEL);
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__NotHolder.selector, id, user));
        vm.prank(user);
        personas.updatePersona(id, "bafy-v2", ADAPTER, BASE_MODEL);
        _assertPersona(id, MANIFEST, ADAPTER, BASE_MODEL, PRICE);
    }

    function test_UpdatePersona_RevertsWhen_ManifestEmpty() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__EmptyManifest.selector));
        vm.prank(creator);
        personas.updatePersona(id, "", ADAPTER, OTHER_BASE_MODEL);
        _assertPersona(id, MANIFEST, ADAPTER, BASE_MODEL, PRICE);
    }

    function test_UpdatePersona_RevertsWhen_BaseModelMissing() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__MissingBaseModel.selector));
        vm.prank(creator);
        personas.updatePersona(id, "bafy-v2", bytes32(0), bytes32(0));
        _assertPersona(id, MANIFEST, ADAPTER, BASE_MODEL, PRICE);
    }

    // ------------------------------------------------------------- scheduleRoyalty

    function test_ScheduleRoyalty_TakesEffectExactlyAfterDelay() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        uint256 t0 = vm.getBlockTimestamp();

        uint256 effectiveAt = _schedule(id, 300_000);

        assertEq(effectiveAt, t0 + ROYALTY_DELAY);
        _assertRoyalty(id, creator, ROYALTY);
        _assertSchedule(id, ROYALTY, 300_000, effectiveAt);

        vm.warp(effectiveAt - 1);
        _assertRoyalty(id, creator, ROYALTY);
        _assertSchedule(id, ROYALTY, 300_000, effectiveAt);

        vm.warp(effectiveAt);
        _assertRoyalty(id, creator, 300_000);
        _assertSchedule(id, 300_000, 300_000, 0);

        vm.warp(effectiveAt + 365 days);
        _assertRoyalty(id, creator, 300_000);
        _assertSchedule(id, 300_000, 300_000, 0);
    }

    function test_ScheduleRoyalty_CanLowerToZero() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        uint256 effectiveAt = _schedule(id, 0);
        // A pending zero must still read as pending: "no change" is effectiveAt == 0, not next == 0.
        _assertSchedule(id, ROYALTY, 0, effectiveAt);
        vm.warp(effectiveAt);
        _assertRoyalty(id, creator, 0);
        _assertSchedule(id, 0, 0, 0);
    }

    function test_ScheduleRoyalty_EmitsRoyaltyScheduled() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        uint256 effectiveAt = vm.getBlockTimestamp() + ROYALTY_DELAY;
        vm.expectEmit(true, true, true, true, address(personas));
        emit PersonaRegistry.RoyaltyScheduled(id, 300_000, effectiveAt);
        _schedule(id, 300_000);
    }

    function test_ScheduleRoyalty_SecondScheduleReplacesPendingOne() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        uint256 t0 = vm.getBlockTimestamp();
        uint256 firstAt = _schedule(id, 300_000);

        vm.warp(t0 + 1 days);
        uint256 secondAt = _schedule(id, 400_000);
        assertEq(secondAt, t0 + 1 days + ROYALTY_DELAY);
        _assertSchedule(id, ROYALTY, 400_000, secondAt);

        // The replaced change never takes effect, not even for a moment at its own date.
        vm.warp(firstAt);
        _assertRoyalty(id, creator, ROYALTY);
        vm.warp(secondAt - 1);
        _assertRoyalty(id, creator, ROYALTY);
        vm.warp(secondAt);
        _assertRoyalty(id, creator, 400_000);
        _assertSchedule(id, 400_000, 400_000, 0);
    }

    function test_ScheduleRoyalty_FoldsAChangeThatTookEffectIntoCurrent() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        uint256 t0 = vm.getBlockTimestamp();
        uint256 firstAt = _schedule(id, 300_000);

        vm.warp(firstAt + 1 days);
        uint256 secondAt = _schedule(id, 50_000);

        // The first change stays in force until the second takes over; ROYALTY is gone for good.
        _assertRoyalty(id, creator, 300_000);
        _assertSchedule(id, 300_000, 50_000, secondAt);
        vm.warp(secondAt - 1);
        _assertRoyalty(id, creator, 300_000);
        vm.warp(secondAt);
        _assertRoyalty(id, creator, 50_000);
        assertEq(secondAt, t0 + 2 * ROYALTY_DELAY + 1 days);
    }

    function test_ScheduleRoyalty_AtTheEffectiveSecondFoldsThePreviousChange() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        uint256 firstAt = _schedule(id, 300_000);

        // At `firstAt` the first change is in force, so rescheduling then must keep it, not ROYALTY.
        vm.warp(firstAt);
        uint256 secondAt = _schedule(id, 400_000);
        _assertRoyalty(id, creator, 300_000);
        _assertSchedule(id, 300_000, 400_000, secondAt);
    }

    function test_ScheduleRoyalty_OneSecondBeforeEffectiveReplacesThePreviousChange() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        uint256 firstAt = _schedule(id, 300_000);

        vm.warp(firstAt - 1);
        uint256 secondAt = _schedule(id, 400_000);
        _assertSchedule(id, ROYALTY, 400_000, secondAt);
        vm.warp(firstAt);
        _assertRoyalty(id, creator, ROYALTY);
    }

    function test_ScheduleRoyalty_AcceptsLargestRoyalty() public {
        uint256 id = _createPersona(creator, 0, PRICE);
        uint256 effectiveAt = _schedule(id, MAX_ROYALTY);
        vm.warp(effectiveAt);
        _assertRoyalty(id, creator, MAX_ROYALTY);
    }

    function test_ScheduleRoyalty_RevertsWhen_PersonaUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__UnknownPersona.selector, 7));
        vm.prank(creator);
        personas.scheduleRoyalty(7, 1);
    }

    function test_ScheduleRoyalty_RevertsWhen_CallerNotHolder() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        uint256 effectiveAt = _schedule(id, 300_000);

        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__NotHolder.selector, id, stranger));
        vm.prank(stranger);
        personas.scheduleRoyalty(id, 1);
        _assertSchedule(id, ROYALTY, 300_000, effectiveAt);
    }

    function test_ScheduleRoyalty_RevertsWhen_RoyaltyTooHigh() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        uint256 effectiveAt = _schedule(id, 300_000);

        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__RoyaltyTooHigh.selector, MAX_ROYALTY + 1, MAX_ROYALTY));
        vm.prank(creator);
        personas.scheduleRoyalty(id, MAX_ROYALTY + 1);
        _assertSchedule(id, ROYALTY, 300_000, effectiveAt);
    }

    /// forge-config: fuzz.runs = 256
    function testFuzz_RoyaltyOf_FollowsTwoSchedulesAtAnyTime(
        uint96 r0,
        uint96 r1,
        uint96 r2,
        uint256 d1,
        uint256 d2,
        uint256 d3
    ) public {
        d1 = bound(d1, 0, 3 * ROYALTY_DELAY);
        d2 = bound(d2, 0, 3 * ROYALTY_DELAY);
        d3 = bound(d3, 0, 3 * ROYALTY_DELAY);
        (r0, r1, r2) = (uint96(r0 % (MAX_ROYALTY + 1)), uint96(r1 % (MAX_ROYALTY + 1)), uint96(r2 % (MAX_ROYALTY + 1)));
        uint256 t0 = vm.getBlockTimestamp();
        uint256 id = _createPersona(creator, r0, 0);

        uint256 t1 = t0 + d1;
        vm.warp(t1);
        uint256 e1 = _schedule(id, r1);
        assertEq(e1, t1 + ROYALTY_DELAY);

        uint256 t2 = t1 + d2;
        vm.warp(t2);
        uint256 inForce = t2 >= e1 ? r1 : r0;
        _assertRoyalty(id, creator, inForce);

        uint256 e2 = _schedule(id, r2);
        _assertRoyalty(id, creator, inForce);
        _assertSchedule(id, inForce, r2, e2);

        uint256 t3 = t2 + d3;
        vm.warp(t3);
        if (t3 >= e2) {
            _assertRoyalty(id, creator, r2);
            _assertSchedule(id, r2, r2, 0);
        } else {
            _assertRoyalty(id, creator, inForce);
            _assertSchedule(id, inForce, r2, e2);
        }
    }

    /// forge-config: fuzz.runs = 128
    function testFuzz_ScheduleRoyalty_EffectiveExactlyAfterAnyDelay(uint256 delay, uint96 oldRoyalty, uint96 newRoyalty)
        public
    {
        delay = bound(delay, 1, personas.MAX_DELAY());
        PersonaRegistry registry = new PersonaRegistry(delay, type(uint96).max);
        vm.prank(creator);
        uint256 id = registry.createPersona(MANIFEST, ADAPTER, BASE_MODEL, oldRoyalty, 0);
        uint256 t0 = vm.getBlockTimestamp();

        vm.prank(creator);
        uint256 effectiveAt = registry.scheduleRoyalty(id, newRoyalty);
        assertEq(effectiveAt, t0 + delay);

        vm.warp(effectiveAt - 1);
        (, uint256 r) = registry.royaltyOf(id);
        assertEq(r, oldRoyalty, "old royalty until the last second");
        vm.warp(effectiveAt);
        (, r) = registry.royaltyOf(id);
        assertEq(r, newRoyalty, "new royalty from the effective second");
    }

    // ------------------------------------------------------------- setAdoptionPrice

    function test_SetAdoptionPrice_AppliesImmediately() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        vm.prank(creator);
        personas.setAdoptionPrice(id, 9 * USD);

        (address holder, uint256 price) = personas.adoptionTermsOf(id);
        assertEq(holder, creator);
        assertEq(price, 9 * USD);
        _assertPersona(id, MANIFEST, ADAPTER, BASE_MODEL, 9 * USD);
        _assertRoyalty(id, creator, ROYALTY);

        vm.prank(creator);
        personas.setAdoptionPrice(id, 0);
        (, price) = personas.adoptionTermsOf(id);
        assertEq(price, 0);
    }

    function test_SetAdoptionPrice_EmitsAdoptionPriceChanged() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        vm.expectEmit(true, true, true, true, address(personas));
        emit PersonaRegistry.AdoptionPriceChanged(id, 9 * USD);
        vm.prank(creator);
        personas.setAdoptionPrice(id, 9 * USD);
    }

    function test_SetAdoptionPrice_RevertsWhen_PersonaUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__UnknownPersona.selector, 0));
        vm.prank(creator);
        personas.setAdoptionPrice(0, 1);
    }

    function test_SetAdoptionPrice_RevertsWhen_CallerNotHolder() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__NotHolder.selector, id, stranger));
        vm.prank(stranger);
        personas.setAdoptionPrice(id, 0);
        (, uint256 price) = personas.adoptionTermsOf(id);
        assertEq(price, PRICE);
    }

    // ------------------------------------------------------------- holder changes

    function test_Transfer_MovesRoyaltyAndAdoptionTermsToNewHolder() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        uint256 effectiveAt = _schedule(id, 300_000);

        vm.prank(creator);
        personas.transferFrom(creator, stranger, id);

        _assertRoyalty(id, stranger, ROYALTY);
        (address holder, uint256 price) = personas.adoptionTermsOf(id);
        assertEq(holder, stranger);
        assertEq(price, PRICE);
        // The record and the pending change travel with the token.
        _assertPersona(id, MANIFEST, ADAPTER, BASE_MODEL, PRICE);
        _assertSchedule(id, ROYALTY, 300_000, effectiveAt);
        vm.warp(effectiveAt);
        _assertRoyalty(id, stranger, 300_000);
    }

    function test_Transfer_HandsHolderPowersToNewHolderOnly() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        vm.prank(creator);
        personas.safeTransferFrom(creator, stranger, id);

        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__NotHolder.selector, id, creator));
        vm.prank(creator);
        personas.setAdoptionPrice(id, 0);
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__NotHolder.selector, id, creator));
        vm.prank(creator);
        personas.scheduleRoyalty(id, 0);
        vm.expectRevert(abi.encodeWithSelector(PersonaRegistry.Persona__NotHolder.selector, id, creator));
        vm.prank(creator);
        personas.updatePersona(id, "bafy-v2", ADAPTER, BASE_MODEL);

        vm.startPrank(stranger);
        personas.setAdoptionPrice(id, 1);
        personas.updatePersona(id, "bafy-v2", bytes32(0), BASE_MODEL);
        uint256 effectiveAt = personas.scheduleRoyalty(id, 7);
        vm.stopPrank();

        _assertPersona(id, "bafy-v2", bytes32(0), BASE_MODEL, 1);
        _assertSchedule(id, ROYALTY, 7, effectiveAt);
    }

    function test_Transfer_ByApprovedOperatorMovesHolder() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        vm.prank(creator);
        personas.approve(user, id);

        vm.prank(user);
        personas.transferFrom(creator, stranger, id);
        _assertRoyalty(id, stranger, ROYALTY);
        (address holder,) = personas.adoptionTermsOf(id);
        assertEq(holder, stranger);
    }

    function test_Transfer_RevertsWhen_CallerNotApproved() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        vm.expectRevert(abi.encodeWithSelector(IERC721Errors.ERC721InsufficientApproval.selector, stranger, id));
        vm.prank(stranger);
        personas.transferFrom(creator, stranger, id);
        _assertRoyalty(id, creator, ROYALTY);
    }

    /// @dev The escrow and the agent registry read the persona through this interface only.
    function test_Interface_ReadsTheSameAsTheRegistry() public {
        uint256 id = _createPersona(creator, ROYALTY, PRICE);
        IPersonaRegistry i = IPersonaRegistry(address(personas));
        assertEq(i.royaltyDelay(), ROYALTY_DELAY);
        (address h, uint256 r) = i.royaltyOf(id);
        assertEq(h, creator);
        assertEq(r, ROYALTY);
        (h, r) = i.adoptionTermsOf(id);
        assertEq(h, creator);
        assertEq(r, PRICE);
    }
}

/// @dev Exposes the library on a storage slot, so its two functions can be fuzzed on any state.
contract PersonaRegistryTestScheduledHarness {
    using Scheduled for Scheduled.Value;

    Scheduled.Value internal _value;

    function set(uint96 current, uint96 next, uint64 effectiveAt) external {
        _value = Scheduled.Value(current, next, effectiveAt);
    }

    function get() external view returns (uint96 current, uint96 next, uint64 effectiveAt) {
        return (_value.current, _value.next, _value.effectiveAt);
    }

    function at(uint256 timestamp) external view returns (uint256) {
        return _value.at(timestamp);
    }

    function state(uint256 timestamp) external view returns (uint256 current, uint256 next, uint256 effectiveAt) {
        return _value.state(timestamp);
    }

    function schedule(uint96 value, uint64 effectiveAt) external {
        _value.schedule(value, effectiveAt);
    }
}

contract ScheduledTest is SoulmeshTest {
    PersonaRegistryTestScheduledHarness internal harness;

    function setUp() public {
        harness = new PersonaRegistryTestScheduledHarness();
    }

    function test_At_WithNothingScheduledIsCurrent() public {
        // A zero effectiveAt means "nothing scheduled" whatever `next` holds.
        harness.set(5, 9, 0);
        assertEq(harness.at(0), 5);
        assertEq(harness.at(type(uint256).max), 5);
    }

    function test_At_SwitchesAtTheEffectiveSecond() public {
        harness.set(5, 9, 1000);
        assertEq(harness.at(999), 5);
        assertEq(harness.at(1000), 9);
        assertEq(harness.at(1001), 9);
    }

    function testFuzz_At_MatchesModel(uint96 current, uint96 next, uint64 effectiveAt, uint256 timestamp) public {
        harness.set(current, next, effectiveAt);
        uint256 expected = (effectiveAt != 0 && timestamp >= effectiveAt) ? next : current;
        assertEq(harness.at(timestamp), expected);
    }

    function test_State_PendingUntilTheEffectiveSecond() public {
        harness.set(5, 9, 1000);
        _assertState(999, 5, 9, 1000);
        _assertState(1000, 9, 9, 0);
        harness.set(5, 9, 0);
        _assertState(1000, 5, 5, 0);
    }

    function testFuzz_State_MatchesModel(uint96 current, uint96 next, uint64 effectiveAt, uint256 timestamp) public {
        harness.set(current, next, effectiveAt);
        bool pending = effectiveAt != 0 && timestamp < effectiveAt;
        uint256 inForce = harness.at(timestamp);
        if (pending) {
            _assertState(timestamp, current, next, effectiveAt);
        } else {
            _assertState(timestamp, inForce, inForce, 0);
        }
    }

    function _assertState(uint256 timestamp, uint256 current, uint256 next, uint256 effectiveAt) internal view {
        (uint256 c, uint256 n, uint256 e) = harness.state(timestamp);
        assertEq(c, current, "state current");
        assertEq(n, next, "state next");
        assertEq(e, effectiveAt, "state effectiveAt");
    }

    function testFuzz_Schedule_FoldsOrReplaces(
        uint96 current,
        uint96 next,
        uint64 effectiveAt,
        uint256 nowTs,
        uint96 value,
        uint64 newEffectiveAt
    ) public {
        nowTs = bound(nowTs, 1, type(uint64).max);
        harness.set(current, next, effectiveAt);
        vm.warp(nowTs);
        uint256 inForce = harness.at(nowTs);

        harness.schedule(value, newEffectiveAt);

        (uint96 c, uint96 n, uint64 e) = harness.get();
        assertEq(c, inForce, "current is what was in force when scheduling");
        assertEq(n, value);
        assertEq(e, newEffectiveAt);
    }
}
