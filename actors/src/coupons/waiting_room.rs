//! A waiting room in front of a coupon whose demand is far above its supply: members get a
//! place in arrival order (joining again keeps the first place) and are admitted at the
//! coupon's rate on a fixed tick, through the same batch path as direct issues.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use ractor::ActorRef;
use surge_persistence::now_millis;

use super::actor::{Answer, CouponActor, CouponMsg, CouponState, IssueCall};
use super::{ADMIT_TICK, CouponError, IssueOutcome, QueueStatus};

/// A waiting room: places in arrival order, admitted at a fixed rate.
#[derive(Debug, Default)]
pub(super) struct WaitingRoom {
    /// Members per second.
    pub(super) rate: f64,
    /// Admissions earned but not yet spent (a token bucket without burst beyond one tick).
    pub(super) tokens: f64,
    pub(super) queue: VecDeque<(u64, i64, Option<String>)>,
    /// Place number of every member still queued; a member joins at most once.
    pub(super) places: HashMap<i64, u64>,
    pub(super) next_place: u64,
    /// Members admitted and how it ended for them.
    pub(super) admitted: HashMap<i64, QueueStatus>,
}

impl WaitingRoom {
    pub(super) fn position(&self, user_id: i64) -> Option<u64> {
        let place = *self.places.get(&user_id)?;
        let front = self.queue.front().map_or(place, |(p, _, _)| *p);
        Some(place - front + 1)
    }
}

impl CouponActor {
    pub(super) fn join_room(
        state: &mut CouponState,
        call: IssueCall,
        max_room_size: usize,
    ) -> Result<IssueOutcome, CouponError> {
        let now = now_millis();
        if now < state.coupon.def.opens_at {
            return Ok(IssueOutcome::NotOpen {
                opens_at: state.coupon.def.opens_at,
            });
        }
        let sold_out = state.sold_out;
        let Some(room) = state.room.as_mut() else {
            return Err(CouponError::Unavailable("no waiting room".into()));
        };
        if let Some(position) = room.position(call.user_id) {
            return Ok(IssueOutcome::Queued { position });
        }
        match room.admitted.get(&call.user_id) {
            Some(QueueStatus::Issued) => return Ok(IssueOutcome::AlreadyIssued),
            Some(QueueStatus::SoldOut) => return Ok(IssueOutcome::SoldOut),
            _ => {}
        }
        if state.holders.contains_key(&call.user_id) {
            return Ok(IssueOutcome::AlreadyIssued);
        }
        if sold_out {
            return Ok(IssueOutcome::SoldOut);
        }
        if room.queue.len() >= max_room_size {
            return Err(CouponError::Overloaded {
                retry_after_secs: 1,
            });
        }
        let place = room.next_place;
        room.next_place += 1;
        room.places.insert(call.user_id, place);
        room.queue.push_back((place, call.user_id, call.key));
        state
            .stats
            .room_size
            .store(room.queue.len(), Ordering::Relaxed);
        Ok(IssueOutcome::Queued {
            position: room.position(call.user_id).unwrap_or(1),
        })
    }

    pub(super) fn admit(&self, myself: &ActorRef<CouponMsg>, state: &mut CouponState) {
        let sold_out = state.sold_out;
        let in_flight = state.in_flight;
        let Some(room) = state.room.as_mut() else {
            return;
        };
        if sold_out {
            // Nobody queued can get one: tell them all at once.
            for (_, user, _) in room.queue.drain(..) {
                room.places.remove(&user);
                room.admitted.insert(user, QueueStatus::SoldOut);
            }
            state.stats.room_size.store(0, Ordering::Relaxed);
            return;
        }
        let per_tick = room.rate * ADMIT_TICK.as_secs_f64();
        room.tokens = (room.tokens + per_tick).min(per_tick.max(1.0) * 2.0);
        if in_flight || room.queue.is_empty() {
            return;
        }
        // Whole admissions earned; the fraction carries to the next tick.
        let n = room.tokens.floor().max(0.0) as usize;
        let mut admitted = Vec::with_capacity(n.min(room.queue.len()));
        for _ in 0..n {
            let Some((_, user, key)) = room.queue.pop_front() else {
                break;
            };
            room.places.remove(&user);
            admitted.push(IssueCall {
                user_id: user,
                key,
                answer: Answer::Room,
            });
        }
        room.tokens -= admitted.len() as f64;
        state
            .stats
            .room_size
            .store(room.queue.len(), Ordering::Relaxed);
        for call in admitted {
            self.take_request(myself, state, call);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_positions_count_from_the_front() {
        let mut room = WaitingRoom::default();
        for (place, user) in [(0, 10), (1, 11), (2, 12)] {
            room.places.insert(user, place);
            room.queue.push_back((place, user, None));
        }
        assert_eq!(room.position(10), Some(1));
        assert_eq!(room.position(12), Some(3));
        let (_, first, _) = room.queue.pop_front().unwrap();
        room.places.remove(&first);
        assert_eq!(room.position(10), None);
        assert_eq!(room.position(11), Some(1));
        assert_eq!(room.position(12), Some(2));
    }
}
