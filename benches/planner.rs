//! The planner alone: `cargo bench --bench planner` (criterion).
//!
//! One `prism_launcher::reconcile::plan(...)` pass over 10,000 desired
//! instances, each observed RUNNING with a live process: with nothing to
//! do, and with 1 % of them changed (their desired config differs from the
//! one their process runs with: one Stop each). The inputs are built
//! through the public API (the test kit's `lifecycle::planner_inputs`,
//! shared with `cargo bench --bench lifecycle`). Target of issue 5: a pass with nothing to do in at
//! most 2 ms on a 2-core machine.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use prism_testkit::lifecycle::planner_inputs::world;

const N: usize = 10_000;

fn planner(c: &mut Criterion) {
    let idle = world(N, None);
    assert!(idle.plan().actions.is_empty(), "nothing to do");
    c.bench_function("plan 10000 instances, nothing to do", |b| {
        b.iter(|| black_box(idle.plan()));
    });

    let changed = world(N, Some(100));
    assert_eq!(changed.plan().actions.len(), N / 100, "one Stop per change");
    c.bench_function("plan 10000 instances, 1% changed", |b| {
        b.iter(|| black_box(changed.plan()));
    });
}

criterion_group!(benches, planner);
criterion_main!(benches);
