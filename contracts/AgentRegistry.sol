// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IAgentRegistry} from "./interfaces/IAgentRegistry.sol";
import {IPersonaRegistry} from "./interfaces/IPersonaRegistry.sol";

/**
 * @title AgentRegistry
 * @notice Agents owned by their users, one ERC-721 token each, minted from a persona. An agent's memories
 * live encrypted on IPFS; the registry records the head of that memory (the CID of its latest root and a
 * strictly increasing sequence number) so that its owner can load it on any machine.
 * @dev The head may be set by the owner, by anyone ERC-721-approved for the agent, or by a head operator
 * the owner approved: a device key that publishes memory without the power to move the agent.
 */
contract AgentRegistry is ERC721, ReentrancyGuardTransient, IAgentRegistry {
    using SafeERC20 for IERC20;

    /// @notice An agent's persona and memory head.
    struct Agent {
        uint256 personaId;
        string headCid;
        uint64 headSeq;
    }

    IPersonaRegistry private immutable _personas;
    IERC20 private immutable _paymentToken;
    uint256 private _nextId = 1;
    mapping(uint256 agentId => Agent) private _agents;
    mapping(address owner => mapping(address operator => bool)) private _headOperators;

    /// @notice Emitted when a user adopts a persona, paying `adoptionPrice` to its holder.
    event AgentMinted(
        uint256 indexed agentId, uint256 indexed personaId, address indexed owner, address holder, uint256 adoptionPrice
    );
    /// @notice Emitted when an agent's memory head moves.
    event MemoryHeadUpdated(uint256 indexed agentId, string cid, uint64 seq, address indexed by);
    /// @notice Emitted when an owner approves or revokes a head operator.
    event HeadOperatorSet(address indexed owner, address indexed operator, bool approved);

    /// @notice No agent has this id.
    error Agent__UnknownAgent(uint256 agentId);
    /// @notice The caller may not set this agent's memory head.
    error Agent__NotAuthorized(uint256 agentId, address caller);
    /// @notice A head update must carry a higher sequence number than the current head.
    error Agent__StaleHeadSequence(uint256 agentId, uint64 currentSeq, uint64 givenSeq);
    /// @notice A memory head needs a CID.
    error Agent__EmptyHead();
    /// @notice The persona's adoption price is above the most the adopter agreed to pay.
    error Agent__AdoptionPriceAboveMax(uint256 adoptionPrice, uint256 maxAdoptionPrice);
    /// @notice The zero address cannot be a head operator.
    error Agent__ZeroOperator();

    /// @param personas_ The persona registry agents are minted from.
    /// @param paymentToken_ The token adoption prices are paid in.
    constructor(IPersonaRegistry personas_, IERC20 paymentToken_) ERC721("Soulmesh Agent", "SOULA") {
        _personas = personas_;
        _paymentToken = paymentToken_;
    }

    /**
     * @notice Adopts a persona: mints an agent to the caller and pays the adoption price to the persona's
     * holder (the caller must have approved this contract for it).
     * @param personaId The persona to adopt.
     * @param maxAdoptionPrice The most the caller agrees to pay, against a price change racing the mint.
     * @return agentId The new agent's id.
     */
    function mint(uint256 personaId, uint256 maxAdoptionPrice) public nonReentrant returns (uint256 agentId) {
        (address holder, uint256 price) = _personas.adoptionTermsOf(personaId);
        if (price > maxAdoptionPrice) revert Agent__AdoptionPriceAboveMax(price, maxAdoptionPrice);
        agentId = _nextId++;
        _agents[agentId].personaId = personaId;
        emit AgentMinted(agentId, personaId, msg.sender, holder, price);
        _safeMint(msg.sender, agentId);
        if (price > 0) _paymentToken.safeTransferFrom(msg.sender, holder, price);
    }

    /**
     * @notice `mint` with an EIP-2612 permit for the adoption price, in one transaction.
     * @dev A permit that fails (for instance because someone front-ran it) is ignored: the transfer then
     * succeeds only if the allowance is already in place.
     * @param personaId The persona to adopt.
     * @param maxAdoptionPrice The most the caller agrees to pay; also the permit's value.
     * @param deadline The permit's deadline.
     * @param v The permit signature's v.
     * @param r The permit signature's r.
     * @param s The permit signature's s.
     * @return agentId The new agent's id.
     */
    function mintWithPermit(uint256 personaId, uint256 maxAdoptionPrice, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
        returns (uint256 agentId)
    {
        try IERC20Permit(address(_paymentToken)).permit(msg.sender, address(this), maxAdoptionPrice, deadline, v, r, s) {}
            catch {}
        return mint(personaId, maxAdoptionPrice);
    }

    /**
     * @notice Moves the agent's memory head to `cid`, with a sequence number above the current one.
     * @param agentId The agent.
     * @param cid The CID of the memory's new root.
     * @param seq The new sequence number; must be strictly greater than the current one.
     */
    function setMemoryHead(uint256 agentId, string calldata cid, uint64 seq) external {
        address owner = _ownerOf(agentId);
        if (owner == address(0)) revert Agent__UnknownAgent(agentId);
        if (!_isAuthorized(owner, msg.sender, agentId) && !_headOperators[owner][msg.sender]) {
            revert Agent__NotAuthorized(agentId, msg.sender);
        }
        if (bytes(cid).length == 0) revert Agent__EmptyHead();
        Agent storage agent = _agents[agentId];
        if (seq <= agent.headSeq) revert Agent__StaleHeadSequence(agentId, agent.headSeq, seq);
        agent.headCid = cid;
        agent.headSeq = seq;
        emit MemoryHeadUpdated(agentId, cid, seq, msg.sender);
    }

    /**
     * @notice Approves or revokes `operator` to set the memory head of every agent the caller owns.
     * @param operator The operator, typically a device key.
     * @param approved Whether it is approved.
     */
    function setHeadOperator(address operator, bool approved) external {
        if (operator == address(0)) revert Agent__ZeroOperator();
        _headOperators[msg.sender][operator] = approved;
        emit HeadOperatorSet(msg.sender, operator, approved);
    }

    /// @inheritdoc IAgentRegistry
    function personaOf(uint256 agentId) external view returns (uint256) {
        uint256 personaId = _agents[agentId].personaId;
        if (personaId == 0) revert Agent__UnknownAgent(agentId);
        return personaId;
    }

    /// @notice An agent's persona and memory head.
    /// @param agentId The agent.
    function agentOf(uint256 agentId) external view returns (Agent memory) {
        if (_ownerOf(agentId) == address(0)) revert Agent__UnknownAgent(agentId);
        return _agents[agentId];
    }

    /// @notice An agent's memory head.
    /// @param agentId The agent.
    /// @return cid The CID of the memory's latest published root (empty before the first publish).
    /// @return seq Its sequence number.
    function memoryHeadOf(uint256 agentId) external view returns (string memory cid, uint64 seq) {
        if (_ownerOf(agentId) == address(0)) revert Agent__UnknownAgent(agentId);
        Agent storage agent = _agents[agentId];
        return (agent.headCid, agent.headSeq);
    }

    /// @notice Whether `operator` may set the memory head of `owner`'s agents.
    function isHeadOperator(address owner, address operator) external view returns (bool) {
        return _headOperators[owner][operator];
    }

    /// @notice The persona registry agents are minted from.
    function personaRegistry() external view returns (IPersonaRegistry) {
        return _personas;
    }

    /// @notice The token adoption prices are paid in.
    function paymentToken() external view returns (IERC20) {
        return _paymentToken;
    }

    /// @notice The number of agents minted so far.
    function totalAgents() external view returns (uint256) {
        return _nextId - 1;
    }
}
