// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

/**
 * @title Scheduled
 * @notice A value whose changes take effect only after a delay.
 * @dev Royalties and the protocol fee use it so that whoever signs a voucher can know every rate that
 * will apply when it settles: the delay is longer than any voucher's lifetime, so a change scheduled
 * after a voucher was signed can only take effect after that voucher has expired.
 */
library Scheduled {
    /// @dev One storage slot: the value in force, the value scheduled to replace it and when.
    struct Value {
        uint96 current;
        uint96 next;
        uint64 effectiveAt;
    }

    /// @notice The value in force at `timestamp`.
    function at(Value memory self, uint256 timestamp) internal pure returns (uint256) {
        return (self.effectiveAt != 0 && timestamp >= self.effectiveAt) ? self.next : self.current;
    }

    /**
     * @notice The value in force at `timestamp` and the change still pending then, if any.
     * @return current The value in force.
     * @return next The value scheduled to replace it (equal to `current` when none is pending).
     * @return effectiveAt When `next` takes effect (zero when none is pending).
     */
    function state(Value memory self, uint256 timestamp)
        internal
        pure
        returns (uint256 current, uint256 next, uint256 effectiveAt)
    {
        current = at(self, timestamp);
        if (self.effectiveAt != 0 && timestamp < self.effectiveAt) {
            (next, effectiveAt) = (self.next, self.effectiveAt);
        } else {
            next = current;
        }
    }

    /**
     * @notice Schedules `value` to take effect at `effectiveAt`.
     * @dev A change that has already taken effect is folded into `current` first. A change still pending
     * is replaced: it was never in force, and the new one takes effect later than it would have.
     */
    function schedule(Value storage self, uint96 value, uint64 effectiveAt) internal {
        Value memory s = self;
        if (s.effectiveAt != 0 && block.timestamp >= s.effectiveAt) {
            s.current = s.next;
        }
        self.current = s.current;
        self.next = value;
        self.effectiveAt = effectiveAt;
    }
}
