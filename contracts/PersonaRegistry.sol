// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {IPersonaRegistry} from "./interfaces/IPersonaRegistry.sol";
import {Scheduled} from "./libraries/Scheduled.sol";

/**
 * @title PersonaRegistry
 * @notice Personas published by creators, one ERC-721 token each. A persona names its manifest on IPFS
 * (character card and adapter), the SHA-256 of its LoRA adapter (or none), the hash of the base model it
 * runs on, the royalty it earns per million tokens generated and the price of adopting it. Whoever holds
 * the token is paid its royalties and adoptions.
 * @dev A royalty change takes effect only after `royaltyDelay`, which the escrow requires to be longer
 * than the longest voucher lifetime: a rise scheduled after a voucher was signed takes effect only after it
 * expired. Royalties are capped at `maxRoyaltyPerMillion`, fixed at deployment, so that no holder can price
 * a persona beyond what any payer's voucher could carry.
 */
contract PersonaRegistry is ERC721, IPersonaRegistry {
    using Scheduled for Scheduled.Value;

    /// @notice The public part of a persona.
    struct Persona {
        string manifestCid;
        bytes32 adapterSha256;
        bytes32 baseModelHash;
        uint256 adoptionPrice;
    }

    uint256 private immutable _royaltyDelay;
    uint256 private immutable _maxRoyalty;
    uint256 private _nextId = 1;
    /// @notice The longest royalty delay: a year keeps every schedule date far inside uint64.
    uint256 public constant MAX_DELAY = 365 days;

    /// @dev `royaltyOf`'s answer, in one slot: the escrow asks it for every voucher it settles, so that a
    /// persona whose royalty never changed costs one storage read. `holder` mirrors the token's owner (kept
    /// in step by `_update`); `royalty` is the royalty in force, or `SCHEDULED` once a change was scheduled.
    struct Terms {
        address holder;
        uint96 royalty;
    }

    /// @dev `Terms.royalty` of a persona whose royalty lives in `_royalties` (a change was scheduled, or
    /// the royalty itself is this value).
    uint96 private constant SCHEDULED = type(uint96).max;

    mapping(uint256 personaId => Persona) private _personas;
    mapping(uint256 personaId => Terms) private _terms;
    /// @dev The royalty schedule of a persona whose `Terms.royalty` is `SCHEDULED`; unused otherwise.
    mapping(uint256 personaId => Scheduled.Value) private _royalties;

    /// @notice Emitted when a creator mints a persona.
    event PersonaCreated(
        uint256 indexed personaId,
        address indexed creator,
        string manifestCid,
        bytes32 adapterSha256,
        bytes32 baseModelHash,
        uint256 royaltyPerMillion,
        uint256 adoptionPrice
    );
    /// @notice Emitted when the holder publishes a new manifest, adapter or base model.
    event PersonaUpdated(uint256 indexed personaId, string manifestCid, bytes32 adapterSha256, bytes32 baseModelHash);
    /// @notice Emitted when the holder schedules a royalty change.
    event RoyaltyScheduled(uint256 indexed personaId, uint256 royaltyPerMillion, uint256 effectiveAt);
    /// @notice Emitted when the holder changes the adoption price (it applies to the next adoption).
    event AdoptionPriceChanged(uint256 indexed personaId, uint256 adoptionPrice);

    /// @notice No persona has this id.
    error Persona__UnknownPersona(uint256 personaId);
    /// @notice Only the persona's holder may do this.
    error Persona__NotHolder(uint256 personaId, address caller);
    /// @notice A persona needs a manifest CID.
    error Persona__EmptyManifest();
    /// @notice A persona needs the hash of the base model it runs on.
    error Persona__MissingBaseModel();
    /// @notice The royalty is above `maxRoyaltyPerMillion()`.
    error Persona__RoyaltyTooHigh(uint256 royaltyPerMillion, uint256 maxRoyaltyPerMillion);
    /// @notice The royalty delay must be positive.
    error Persona__ZeroDelay();
    /// @notice The royalty delay is above MAX_DELAY.
    error Persona__DelayTooLong(uint256 delay, uint256 maxDelay);

    /**
     * @param royaltyDelay_ Seconds between scheduling a royalty change and its taking effect.
     * @param maxRoyaltyPerMillion_ The highest royalty per million tokens a persona may ask (at most
     * uint96's range, which vouchers carry).
     */
    constructor(uint256 royaltyDelay_, uint256 maxRoyaltyPerMillion_) ERC721("Soulmesh Persona", "SOULP") {
        if (royaltyDelay_ == 0) revert Persona__ZeroDelay();
        if (royaltyDelay_ > MAX_DELAY) revert Persona__DelayTooLong(royaltyDelay_, MAX_DELAY);
        if (maxRoyaltyPerMillion_ > type(uint96).max) {
            revert Persona__RoyaltyTooHigh(maxRoyaltyPerMillion_, type(uint96).max);
        }
        _royaltyDelay = royaltyDelay_;
        _maxRoyalty = maxRoyaltyPerMillion_;
    }

    modifier onlyHolder(uint256 personaId) {
        address holder = _ownerOf(personaId);
        if (holder == address(0)) revert Persona__UnknownPersona(personaId);
        if (holder != msg.sender) revert Persona__NotHolder(personaId, msg.sender);
        _;
    }

    /**
     * @notice Mints a persona to the caller, who becomes its creator and first holder.
     * @param manifestCid CID of the persona's manifest on IPFS (character card, adapter).
     * @param adapterSha256 SHA-256 of the LoRA adapter file, or zero for a persona without one.
     * @param baseModelHash SHA-256 of the base model file the persona runs on.
     * @param royaltyPerMillion Royalty per million tokens (input and output), in payment-token units.
     * @param adoptionPrice Price a user pays the holder to mint an agent from this persona.
     * @return personaId The new persona's id.
     */
    function createPersona(
        string calldata manifestCid,
        bytes32 adapterSha256,
        bytes32 baseModelHash,
        uint256 royaltyPerMillion,
        uint256 adoptionPrice
    ) external returns (uint256 personaId) {
        _checkManifest(manifestCid, baseModelHash);
        uint96 royalty = _toRoyalty(royaltyPerMillion);
        personaId = _nextId++;
        _personas[personaId] = Persona(manifestCid, adapterSha256, baseModelHash, adoptionPrice);
        if (royalty == SCHEDULED) _royalties[personaId].current = royalty;
        // `_mint` fills in the holder.
        _terms[personaId].royalty = royalty;
        emit PersonaCreated(
            personaId, msg.sender, manifestCid, adapterSha256, baseModelHash, royaltyPerMillion, adoptionPrice
        );
        _mint(msg.sender, personaId);
    }

    /**
     * @notice Publishes a new version of the persona: a new manifest, adapter or base model.
     * @dev Providers verify the adapter against the hash recorded here before loading it.
     * @param personaId The persona.
     * @param manifestCid The new manifest CID.
     * @param adapterSha256 SHA-256 of the new adapter, or zero for none.
     * @param baseModelHash SHA-256 of the base model the new version runs on.
     */
    function updatePersona(uint256 personaId, string calldata manifestCid, bytes32 adapterSha256, bytes32 baseModelHash)
        external
        onlyHolder(personaId)
    {
        _checkManifest(manifestCid, baseModelHash);
        Persona storage p = _personas[personaId];
        p.manifestCid = manifestCid;
        p.adapterSha256 = adapterSha256;
        p.baseModelHash = baseModelHash;
        emit PersonaUpdated(personaId, manifestCid, adapterSha256, baseModelHash);
    }

    /**
     * @notice Schedules a royalty change, effective `royaltyDelay()` seconds from now. A change still
     * pending is replaced.
     * @param personaId The persona.
     * @param royaltyPerMillion The new royalty per million tokens.
     * @return effectiveAt When the new royalty takes effect.
     */
    function scheduleRoyalty(uint256 personaId, uint256 royaltyPerMillion)
        external
        onlyHolder(personaId)
        returns (uint256 effectiveAt)
    {
        uint96 royalty = _toRoyalty(royaltyPerMillion);
        effectiveAt = block.timestamp + _royaltyDelay;
        Terms storage terms = _terms[personaId];
        Scheduled.Value storage schedule = _royalties[personaId];
        // The first change moves the royalty in force into the schedule, which holds it from then on.
        if (terms.royalty != SCHEDULED) (schedule.current, terms.royalty) = (terms.royalty, SCHEDULED);
        schedule.schedule(royalty, uint64(effectiveAt));
        emit RoyaltyScheduled(personaId, royaltyPerMillion, effectiveAt);
    }

    /**
     * @notice Sets the adoption price. It applies at once; adopters are protected by the maximum price
     * they pass to `AgentRegistry.mint`.
     * @param personaId The persona.
     * @param adoptionPrice The new price.
     */
    function setAdoptionPrice(uint256 personaId, uint256 adoptionPrice) external onlyHolder(personaId) {
        _personas[personaId].adoptionPrice = adoptionPrice;
        emit AdoptionPriceChanged(personaId, adoptionPrice);
    }

    /// @inheritdoc IPersonaRegistry
    function royaltyDelay() external view returns (uint256) {
        return _royaltyDelay;
    }

    /// @notice The highest royalty per million tokens a persona may ask.
    function maxRoyaltyPerMillion() external view returns (uint256) {
        return _maxRoyalty;
    }

    /// @inheritdoc IPersonaRegistry
    function royaltyOf(uint256 personaId) external view returns (address holder, uint256 royaltyPerMillion) {
        Terms memory terms = _terms[personaId];
        holder = terms.holder;
        if (holder == address(0)) revert Persona__UnknownPersona(personaId);
        royaltyPerMillion = terms.royalty != SCHEDULED ? terms.royalty : _royalties[personaId].at(block.timestamp);
    }

    /// @inheritdoc IPersonaRegistry
    function adoptionTermsOf(uint256 personaId) external view returns (address holder, uint256 adoptionPrice) {
        holder = _requirePersona(personaId);
        adoptionPrice = _personas[personaId].adoptionPrice;
    }

    /// @notice The persona's public record.
    /// @param personaId The persona.
    function personaOf(uint256 personaId) external view returns (Persona memory) {
        _requirePersona(personaId);
        return _personas[personaId];
    }

    /**
     * @notice The persona's royalty schedule: the royalty in force now, and the pending change if any.
     * @param personaId The persona.
     * @return current The royalty in force now.
     * @return next The royalty scheduled to replace it (equal to `current` when none is pending).
     * @return effectiveAt When `next` takes effect (zero when none is pending).
     */
    function royaltyScheduleOf(uint256 personaId)
        external
        view
        returns (uint256 current, uint256 next, uint256 effectiveAt)
    {
        _requirePersona(personaId);
        uint256 royalty = _terms[personaId].royalty;
        if (royalty != SCHEDULED) return (royalty, royalty, 0);
        return _royalties[personaId].state(block.timestamp);
    }

    /// @notice The number of personas minted so far.
    function totalPersonas() external view returns (uint256) {
        return _nextId - 1;
    }

    /// @dev Keeps `Terms.holder` equal to the token's owner through every mint and transfer.
    function _update(address to, uint256 tokenId, address auth) internal override returns (address from) {
        from = super._update(to, tokenId, auth);
        _terms[tokenId].holder = to;
    }

    function _requirePersona(uint256 personaId) private view returns (address holder) {
        holder = _ownerOf(personaId);
        if (holder == address(0)) revert Persona__UnknownPersona(personaId);
    }

    function _checkManifest(string calldata manifestCid, bytes32 baseModelHash) private pure {
        if (bytes(manifestCid).length == 0) revert Persona__EmptyManifest();
        if (baseModelHash == bytes32(0)) revert Persona__MissingBaseModel();
    }

    function _toRoyalty(uint256 royaltyPerMillion) private view returns (uint96) {
        if (royaltyPerMillion > _maxRoyalty) revert Persona__RoyaltyTooHigh(royaltyPerMillion, _maxRoyalty);
        return uint96(royaltyPerMillion);
    }
}
