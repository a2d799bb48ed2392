//! The planner alone: `plan()` over a desired set and an observed table
//! of N running instances, with nothing to do and with 1 % of them changed;
//! and those inputs ([`planner_inputs`]), built through the public API and
//! shared with the criterion bench `benches/planner.rs`.

use std::time::Instant;

use super::Ctx;

pub(super) fn planner(ctx: &mut Ctx<'_>) {
    let n = ctx.params.planner_n;
    for (key, changed) in [("noop", None), ("changed", Some(100))] {
        let w = planner_inputs::world(n, changed);
        let expected = changed.map_or(0, |every| n.div_ceil(every));
        for _ in 0..ctx.params.runs {
            // One untimed pass, then the timed ones.
            let p = w.plan();
            assert_eq!(p.actions.len(), expected, "planner {key}: actions");
            for _ in 0..ctx.params.planner_passes {
                let t = Instant::now();
                let p = std::hint::black_box(w.plan());
                let took = t.elapsed();
                drop(p);
                ctx.report.push_ms(&format!("planner.{key}.{n}"), took);
            }
        }
    }
}

/// Inputs of the planner built through the public API: `n` desired
/// instances, each observed RUNNING with a live process.
pub mod planner_inputs {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use prism_launcher::desired::{DesiredSet, Source};
    use prism_launcher::reconcile::observed::{Ports, ProcessInfo};
    use prism_launcher::reconcile::{Observed, ObservedInstance, Phase, Plan, PlanConfig, plan};
    use prism_launcher::sources::Catalog;
    use prism_launcher::spec::manifest::{HealthCheck, Pattern, Resources};
    use prism_launcher::spec::{InstanceKey, InstanceSpec, Isolation};

    /// Everything `plan()` reads.
    pub struct World {
        /// Desired set.
        pub desired: DesiredSet,
        /// Catalog with the one pattern.
        pub catalog: Catalog,
        /// Observed table.
        pub observed: Observed,
        /// The `now` of the passes.
        pub now: Instant,
        /// Default tunables.
        pub cfg: PlanConfig,
    }

    impl World {
        /// One planner pass.
        pub fn plan(&self) -> Plan {
            plan(
                &self.desired,
                &self.catalog,
                &self.observed,
                self.now,
                &self.cfg,
            )
        }
    }

    fn pattern() -> Pattern {
        Pattern {
            name: "bench-pattern".into(),
            version: "1.0.0".into(),
            dir: PathBuf::from("/opt/patterns/bench-pattern"),
            executable: PathBuf::from("/opt/patterns/bench-pattern/bench-pattern"),
            args: vec![],
            isolation: Isolation::Namespace,
            health: HealthCheck::default(),
            resources: Resources::default(),
            environment: BTreeMap::new(),
            config_keys: None,
            inherit_env: Vec::new(),
            exe_hash: 0x5eed,
            run_as: None,
            no_new_privileges: true,
        }
    }

    fn spec(i: usize, level: &str) -> InstanceSpec {
        let key = InstanceKey::new(
            "bench-pattern",
            Isolation::Namespace,
            &format!("t{i:05}"),
            "",
        )
        .expect("valid key");
        let mut config = BTreeMap::new();
        config.insert("LOG_LEVEL".to_string(), level.to_string());
        InstanceSpec::new(key, config, None).expect("valid spec")
    }

    /// `n` running instances, all as desired, except every `changed_every`th
    /// one whose desired config differs (so the planner stops it).
    pub fn world(n: usize, changed_every: Option<usize>) -> World {
        let catalog = Catalog::from_patterns([pattern()]);
        let p = catalog.get("bench-pattern").expect("pattern").clone();
        let now = Instant::now();
        let started = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
        let mut desired = DesiredSet::default();
        let mut observed = Observed::new();
        for i in 0..n {
            let changed = changed_every.is_some_and(|every| i % every == 0);
            let want = spec(i, if changed { "debug" } else { "info" });
            let id = want.key.process_id();
            desired.declare(Source::Api, want).expect("declare");
            // As in the launcher: a process's spec is a clone of the
            // declaration it was started from, unless the declaration
            // changed since.
            let have = if changed {
                spec(i, "info")
            } else {
                desired.get(&id).expect("declared").spec().clone()
            };
            let base = 20_000 + 2 * (i % 20_000);
            let mut o = ObservedInstance::new(
                have,
                p.clone(),
                Ports {
                    grpc: u16::try_from(base).unwrap_or(u16::MAX),
                    health: u16::try_from(base + 1).unwrap_or(u16::MAX),
                },
            );
            o.phase = Phase::Running;
            o.restart_now = false;
            o.healthy_since = Some(started);
            o.process = Some(ProcessInfo {
                pid: 100_000 + u32::try_from(i).unwrap_or(0),
                epoch: i as u64 + 1,
                started_at: started,
                start_time: 1_000 + i as u64,
            });
            observed.insert(id, o);
        }
        World {
            desired,
            catalog,
            observed,
            now,
            cfg: PlanConfig::default(),
        }
    }
}
