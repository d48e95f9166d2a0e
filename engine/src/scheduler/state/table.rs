//! The task table: task ids index it directly, page by page.
//!
//! Ids are handed out in increasing order and never reused, so the ids of one
//! submission are contiguous and a table of pages indexed by `id / PAGE` finds a
//! task with no hashing and with its neighbours' slots in the same cache lines.
//! A page is freed once its last slot has been filled and every task in it is
//! gone, so a long-lived center keeps only the pages that still hold tasks (and
//! 24 bytes for each freed page: 6 MB after a billion tasks).

use std::ops::Index;

use super::{TaskId, TaskState};

const PAGE_BITS: u32 = 12;
const PAGE: usize = 1 << PAGE_BITS;

struct Page {
    slots: Box<[Option<Box<TaskState>>]>,
    live: u32,
    /// The last slot has been filled: no later insert lands in this page.
    sealed: bool,
}

/// Live tasks by id.
#[derive(Default)]
pub(super) struct Tasks {
    pages: Vec<Option<Page>>,
    len: usize,
    /// The highest id inserted so far plus one: inserts must come in increasing order.
    next: TaskId,
}

fn split(id: TaskId) -> (usize, usize) {
    ((id >> PAGE_BITS) as usize, (id as usize) & (PAGE - 1))
}

impl Tasks {
    /// The task with this id, if it is live.
    pub(super) fn get(&self, id: &TaskId) -> Option<&TaskState> {
        let (p, s) = split(*id);
        self.pages.get(p)?.as_ref()?.slots[s].as_deref()
    }

    /// The task with this id, mutably, if it is live.
    pub(super) fn get_mut(&mut self, id: &TaskId) -> Option<&mut TaskState> {
        let (p, s) = split(*id);
        self.pages.get_mut(p)?.as_mut()?.slots[s].as_deref_mut()
    }

    /// Whether the task with this id is live.
    pub(super) fn contains_key(&self, id: &TaskId) -> bool {
        self.get(id).is_some()
    }

    /// Adds a task under a new id, higher than every id inserted before.
    pub(super) fn insert(&mut self, id: TaskId, task: Box<TaskState>) {
        assert!(id >= self.next, "task ids are inserted in increasing order");
        self.next = id + 1;
        let (p, s) = split(id);
        if self.pages.len() <= p {
            self.pages.resize_with(p + 1, || None);
        }
        let page = self.pages[p].get_or_insert_with(|| Page {
            slots: std::iter::repeat_with(|| None).take(PAGE).collect(),
            live: 0,
            sealed: false,
        });
        page.slots[s] = Some(task);
        page.live += 1;
        page.sealed |= s == PAGE - 1;
        self.len += 1;
    }

    /// Removes and returns the task with this id, if it is live.
    pub(super) fn remove(&mut self, id: &TaskId) -> Option<Box<TaskState>> {
        let (p, s) = split(*id);
        let slot = self.pages.get_mut(p)?;
        let page = slot.as_mut()?;
        let task = page.slots[s].take()?;
        page.live -= 1;
        if page.live == 0 && page.sealed {
            *slot = None;
        }
        self.len -= 1;
        Some(task)
    }

    /// Live tasks.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Every live task with its id, in id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (TaskId, &TaskState)> {
        self.pages
            .iter()
            .enumerate()
            .filter_map(|(p, page)| Some((p, page.as_ref()?)))
            .flat_map(|(p, page)| {
                page.slots.iter().enumerate().filter_map(move |(s, t)| {
                    Some((((p << PAGE_BITS) + s) as TaskId, t.as_deref()?))
                })
            })
    }

    /// Every live task, in id order.
    pub(super) fn values(&self) -> impl Iterator<Item = &TaskState> {
        self.iter().map(|(_, t)| t)
    }

    /// Pages allocated (for tests).
    #[cfg(test)]
    fn pages(&self) -> usize {
        self.pages.iter().flatten().count()
    }
}

impl Index<&TaskId> for Tasks {
    type Output = TaskState;

    fn index(&self, id: &TaskId) -> &TaskState {
        self.get(id).expect("live task")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    fn task(name: &str) -> Box<TaskState> {
        Box::new(TaskState::new(
            Key::from(name),
            None,
            Vec::new(),
            (true, 0, 0),
        ))
    }

    #[test]
    fn finds_what_was_inserted_and_forgets_what_was_removed() {
        let mut t = Tasks::default();
        t.insert(3, task("a"));
        t.insert(PAGE as TaskId + 5, task("b"));
        assert_eq!(t.len(), 2);
        assert_eq!(t[&3].key.as_str(), "a");
        assert!(t.get(&4).is_none());
        assert!(t.get(&(1 << 40)).is_none());
        let ids: Vec<TaskId> = t.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, [3, PAGE as TaskId + 5]);
        assert_eq!(t.remove(&3).map(|b| b.key), Some(Key::from("a")));
        assert!(t.remove(&3).is_none());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_page_is_freed_once_filled_and_emptied() {
        let mut t = Tasks::default();
        for id in 0..PAGE as TaskId + 1 {
            t.insert(id, task("x"));
        }
        assert_eq!(t.pages(), 2);
        for id in 0..PAGE as TaskId {
            t.remove(&id);
        }
        assert_eq!(t.pages(), 1, "the full, empty first page is freed");
        t.remove(&(PAGE as TaskId));
        assert_eq!(t.pages(), 1, "the page still being filled is kept");
        t.insert(PAGE as TaskId + 1, task("y"));
        assert_eq!(t.len(), 1);
    }

    #[test]
    #[should_panic(expected = "increasing order")]
    fn ids_must_increase() {
        let mut t = Tasks::default();
        t.insert(5, task("a"));
        t.insert(5, task("b"));
    }
}
