//! The scheduler's invariants, checked by tests after every event.

use super::{Scheduler, State, TaskId};

impl Scheduler {
    /// Checks every invariant of the tables; panics with the first broken one.
    /// Tests call it after every event.
    pub fn sanity_check(&self) {
        for (key, id) in &self.index {
            assert_eq!(&self.tasks[id].key, key, "index points at the wrong task");
        }
        assert_eq!(self.index.len(), self.tasks.len(), "index and tasks differ");
        for (id, t) in self.tasks.iter() {
            let k = &t.key;
            let waiting_dependents = t
                .dependents
                .iter()
                .filter_map(|u| self.tasks.get(u))
                .filter(|u| u.pending())
                .count() as u32;
            assert_eq!(t.waiters, waiting_dependents, "{k}: waiters");
            let live = t
                .dependents
                .iter()
                .filter(|u| self.tasks.contains_key(u))
                .count() as u32;
            assert_eq!(t.live_dependents, live, "{k}: live dependents");
            let held: u32 = self.clients.values().filter_map(|c| c.get(&id)).sum();
            assert_eq!(t.holds, held, "{k}: holds");
            let in_memory = |d: &TaskId| self.tasks[d].state == State::Memory;
            let available = |d: &TaskId| self.tasks[d].available();
            if let Some(r) = t.doomed_by {
                match t.state {
                    State::Memory => {
                        assert_eq!(t.who_has.len(), 1, "{k}: doomed with several copies");
                        let there = State::Processing(t.who_has[0]);
                        assert_eq!(self.tasks[&r].state, there, "{k}: doomed by no run there");
                    }
                    State::Processing(_) => {}
                    s => panic!("{k}: doomed while {s:?}"),
                }
            }
            match t.state {
                State::Memory => {
                    assert!(!t.who_has.is_empty(), "{k}: in memory nowhere");
                    assert!(t.needed(), "{k}: in memory but not needed (leak)");
                    for w in &t.who_has {
                        assert!(
                            self.workers[w].has.contains(&id),
                            "{k}: worker {w} lacks it"
                        );
                    }
                }
                _ => assert!(t.who_has.is_empty(), "{k}: holders while {:?}", t.state),
            }
            if !matches!(t.state, State::Processing(_)) {
                assert!(!t.ahead, "{k}: ahead while {:?}", t.state);
            }
            match t.state {
                State::Waiting => {
                    let missing = t.deps.iter().filter(|d| !available(d)).count() as u32;
                    assert_eq!(t.missing, missing, "{k}: missing");
                    assert!(missing > 0, "{k}: waiting on nothing");
                }
                State::Ready(on) => {
                    assert!(t.deps.iter().all(available), "{k}: ready without inputs");
                    if let Some(w) = on {
                        assert!(
                            self.workers.contains_key(&w),
                            "{k}: queued on a dead worker"
                        );
                    }
                }
                State::Processing(w) => {
                    // A task sent ahead waits on its worker for inputs computed there.
                    let there = |d: &TaskId| in_memory(d) || self.tasks[d].state == t.state;
                    assert!(t.deps.iter().all(there), "{k}: running without inputs");
                    let missing = t.deps.iter().filter(|d| !in_memory(d)).count() as u32;
                    assert_eq!(t.missing, missing, "{k}: missing");
                    assert_eq!(t.ahead, missing > 0, "{k}: ahead");
                    assert!(
                        self.workers[&w].processing.contains(&id),
                        "{k}: not in processing"
                    );
                }
                State::Released | State::Erred => {
                    assert!(
                        t.needed() || t.live_dependents > 0,
                        "{k}: should be forgotten"
                    );
                }
                State::Memory => {}
            }
        }
        for (wid, w) in &self.workers {
            for id in &w.processing {
                assert_eq!(self.tasks[id].state, State::Processing(*wid));
            }
            let ahead = w
                .processing
                .iter()
                .filter(|id| self.tasks[id].ahead)
                .count();
            assert_eq!(w.ahead, ahead, "worker {wid}: tasks ahead");
            // A task sent ahead takes a slot once its inputs are computed.
            assert!(
                w.processing.len() <= 2 * self.capacity(w),
                "worker {wid} over capacity"
            );
            let bytes: u64 = w.has.iter().map(|id| self.tasks[id].nbytes).sum();
            assert_eq!(w.nbytes, bytes, "worker {wid}: bytes");
        }
    }
}
