//! Turning a submitted graph into the tasks to add: validation, culling,
//! depth-first order and fusing. The graph's keys are numbered once, so no
//! step after that hashes a key (a million-task submission hashed each key
//! a dozen times before).

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use super::TaskId;
use crate::error::{Error, Result};
use crate::graph::{Arg, Graph, Node, Task, check_node};
use crate::key::Key;
use crate::ops::OpRegistry;

/// An input of a planned task.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Dep {
    /// A task of this submission: while planning, the graph node of this
    /// number; in the plan returned, the task at this position.
    New(u32),
    /// A task the scheduler already has.
    Known(TaskId),
}

/// One task to add, in the order tasks are added (depth-first post-order
/// from the wanted keys: dependencies first; the position is the priority).
pub(super) struct Planned {
    pub key: Key,
    pub task: Arc<Task>,
    /// Inputs without repeats, in argument order.
    pub deps: Vec<Dep>,
}

/// Checks `graph` and plans the tasks that compute `wanted`. A key the
/// scheduler already has (`index`) is used as it is, even if the graph has a
/// node for it. With `fuse`, a dependency-free node read by exactly one new
/// task (and not wanted itself) is inlined into that task, as an [`Arg::Task`]:
/// only such roots are fused, so inline tasks never nest.
pub(super) fn plan(
    graph: Graph,
    wanted: &[Key],
    ops: &OpRegistry,
    index: &FxHashMap<Key, TaskId>,
    fuse: bool,
) -> Result<Vec<Planned>> {
    let (keys, mut nodes): (Vec<Key>, Vec<Option<Node>>) =
        graph.nodes.into_iter().map(|(k, n)| (k, Some(n))).unzip();
    let local: FxHashMap<&Key, u32> = keys.iter().zip(0..).collect();
    let resolve = |k: &Key| match index.get(k) {
        Some(id) => Some(Dep::Known(*id)),
        None => local.get(k).map(|i| Dep::New(*i)),
    };

    // Every reference of every node, repeats kept (fusing counts them).
    let mut refs: Vec<Vec<Dep>> = Vec::with_capacity(keys.len());
    for (key, node) in keys.iter().zip(&nodes) {
        let node = node.as_ref().expect("all present");
        check_node(key, node, ops)?;
        let mut r = Vec::new();
        let mut missing = None;
        if let Node::Task(t) = node {
            for a in &t.args {
                a.for_each_ref(&mut |d| match resolve(d) {
                    Some(x) => r.push(x),
                    None => missing = missing.take().or_else(|| Some(d.clone())),
                });
            }
        }
        if let Some(dep) = missing {
            return Err(Error::invalid(key, format!("missing dependency '{dep}'")));
        }
        refs.push(r);
    }
    let mut roots = Vec::new();
    let mut is_wanted = vec![false; keys.len()];
    for k in wanted {
        match resolve(k) {
            Some(Dep::New(i)) => {
                is_wanted[i as usize] = true;
                roots.push(i);
            }
            Some(Dep::Known(_)) => {}
            None => return Err(Error::invalid(k, "requested key is not in the graph")),
        }
    }

    // Depth-first from the wanted keys (the last first, as they are popped),
    // then from every other node only to find cycles.
    let unique = |r: &[Dep]| -> Vec<Dep> {
        if r.len() < 2 {
            return r.to_vec();
        }
        let mut seen = FxHashSet::default();
        r.iter().copied().filter(|x| seen.insert(*x)).collect()
    };
    let deps: Vec<Vec<Dep>> = refs.iter().map(|r| unique(r)).collect();
    const NEW: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut colour = vec![NEW; keys.len()];
    let mut order: Vec<u32> = Vec::new();
    let starts = roots
        .iter()
        .rev()
        .map(|r| (*r, true))
        .chain((0..keys.len() as u32).map(|i| (i, false)));
    for (start, keep) in starts {
        if colour[start as usize] != NEW {
            continue;
        }
        colour[start as usize] = ON_PATH;
        let mut stack: Vec<(u32, usize)> = vec![(start, 0)];
        while let Some((node, next)) = stack.last_mut() {
            let n = *node as usize;
            match deps[n].get(*next) {
                Some(dep) => {
                    *next += 1;
                    let Dep::New(d) = *dep else { continue };
                    match colour[d as usize] {
                        NEW => {
                            colour[d as usize] = ON_PATH;
                            stack.push((d, 0));
                        }
                        ON_PATH => {
                            let (key, dep) = (&keys[n], &keys[d as usize]);
                            return Err(Error::invalid(
                                key,
                                format!(
                                    "cycle: '{key}' depends on '{dep}', which depends back on it"
                                ),
                            ));
                        }
                        _ => {}
                    }
                }
                None => {
                    colour[n] = DONE;
                    if keep {
                        order.push(n as u32);
                    }
                    stack.pop();
                }
            }
        }
    }

    // Fusing: a node with no inputs, read once by the planned tasks, not wanted.
    let mut fused = vec![false; keys.len()];
    if fuse {
        let mut uses = vec![0u32; keys.len()];
        for &i in &order {
            for r in &refs[i as usize] {
                if let Dep::New(d) = r {
                    uses[*d as usize] += 1;
                }
            }
        }
        for &i in &order {
            let i = i as usize;
            fused[i] = uses[i] == 1 && !is_wanted[i] && deps[i].is_empty();
        }
    }

    let mut position = vec![u32::MAX; keys.len()];
    let mut out = Vec::with_capacity(order.len());
    for &i in &order {
        let i = i as usize;
        if fused[i] {
            continue;
        }
        let mut task = nodes[i].take().expect("planned once").into_task();
        let inlines = deps[i]
            .iter()
            .any(|d| matches!(d, Dep::New(j) if fused[*j as usize]));
        if inlines {
            let mut t = Arc::unwrap_or_clone(task);
            let mut take = |k: &Key| match local.get(k) {
                Some(&j) if fused[j as usize] && index.get(k).is_none() => nodes[j as usize]
                    .take()
                    .map(|n| Arc::unwrap_or_clone(n.into_task())),
                _ => None,
            };
            t.args = t.args.into_iter().map(|a| inline(a, &mut take)).collect();
            task = Arc::new(t);
        }
        let deps = deps[i]
            .iter()
            .filter_map(|d| match *d {
                Dep::Known(id) => Some(Dep::Known(id)),
                Dep::New(j) if fused[j as usize] => None,
                Dep::New(j) => Some(Dep::New(position[j as usize])),
            })
            .collect();
        position[i] = out.len() as u32;
        out.push(Planned {
            key: keys[i].clone(),
            task,
            deps,
        });
    }
    Ok(out)
}

/// Checks `graph` as a submission asking for `wanted` is checked, with no
/// task known beforehand.
pub(crate) fn check(graph: &Graph, wanted: &[Key], ops: &OpRegistry) -> Result<()> {
    plan(graph.clone(), wanted, ops, &FxHashMap::default(), false).map(drop)
}

/// `a` with each reference that `take` yields a task for replaced by that task.
fn inline(a: Arg, take: &mut impl FnMut(&Key) -> Option<Task>) -> Arg {
    match a {
        Arg::Ref(k) => match take(&k) {
            Some(t) => Arg::Task(Box::new(t)),
            None => Arg::Ref(k),
        },
        Arg::List(items) => Arg::List(items.into_iter().map(|i| inline(i, take)).collect()),
        other => other,
    }
}
