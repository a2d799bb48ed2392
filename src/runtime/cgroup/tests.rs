//! Unit tests of the parent module.

use super::*;

fn touch_all(dir: &Path, files: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for f in files {
        std::fs::write(dir.join(f), "").unwrap();
    }
}

#[test]
fn mountinfo_lines_give_v1_hierarchies_and_the_v2_mount() {
    let info = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:32 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    let m = parse_mounts(info);
    assert_eq!(m.len(), 4);
    assert!(m[3].v2);
    assert!(m[1].controllers.contains("memory"));
    assert_eq!(m[0].point, Path::new("/sys/fs/cgroup/cpu"));
}

#[test]
fn v2_without_controllers_falls_back_to_v1() {
    let t = tempfile::tempdir().unwrap();
    let unified = t.path().join("unified");
    touch_all(&unified, &[V2_CONTROLLERS, V2_SUBTREE]);
    for h in ["memory", "cpu", "freezer"] {
        std::fs::create_dir_all(t.path().join(h)).unwrap();
    }
    let mounts = vec![
        Mount {
            point: unified,
            v2: true,
            controllers: BTreeSet::new(),
        },
        Mount {
            point: t.path().join("memory"),
            v2: false,
            controllers: ["memory".to_string()].into(),
        },
        Mount {
            point: t.path().join("cpu"),
            v2: false,
            controllers: ["cpu".to_string()].into(),
        },
    ];
    let c = Cgroups::detect_in(&mounts, "prism-x");
    assert!(matches!(c, Cgroups::V1(_)), "{c:?}");
    assert_eq!(c.describe(), "cgroup v1 (memory, cpu)");
    assert!(t.path().join("memory/prism-x").is_dir());
}

#[test]
fn nothing_writable_is_unsupported_with_the_reasons() {
    let c = Cgroups::detect_in(&[], "prism-x");
    assert!(!c.enforced());
    assert!(c.describe().contains("not enforced"), "{}", c.describe());
}

#[test]
fn v2_limits_are_written_in_kernel_format() {
    let t = tempfile::tempdir().unwrap();
    let c = Cgroups::v2_at(t.path().to_path_buf());
    c.create(
        "ns:a:p",
        Limits {
            cpu: Some(0.5),
            memory: Some(64 << 20),
            pids: Some(4096),
        },
    )
    .unwrap();
    let dir = t.path().join("ns:a:p");
    assert_eq!(c.join_files("ns:a:p"), vec![dir.join(PROCS)]);
    assert!(!c.cheap_join());
    assert_eq!(
        std::fs::read_to_string(dir.join(V2_CPU_MAX)).unwrap(),
        "50000 100000"
    );
    assert_eq!(std::fs::read_to_string(dir.join(PIDS_MAX)).unwrap(), "4096");
    // A new cgroup without limits keeps the kernel's defaults.
    assert!(c.create("ns:b:p", Limits::default()).unwrap());
    assert!(!t.path().join("ns:b:p").join(V2_CPU_MAX).exists());
    assert!(!t.path().join("ns:b:p").join(V2_MEMORY_MAX).exists());
    assert_eq!(
        std::fs::read_to_string(dir.join(V2_MEMORY_MAX)).unwrap(),
        (64u64 << 20).to_string()
    );
    assert!(!c.create("ns:a:p", Limits::default()).unwrap());
    assert_eq!(
        std::fs::read_to_string(dir.join(V2_CPU_MAX)).unwrap(),
        "max 100000"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(V2_MEMORY_MAX)).unwrap(),
        "max"
    );
    // The limit was 4096 until this create took it away.
    assert_eq!(std::fs::read_to_string(dir.join(PIDS_MAX)).unwrap(), "max");
    std::fs::write(dir.join(PIDS_EVENTS), "max 7\n").unwrap();
    assert_eq!(c.pids_refused("ns:a:p"), 7);
    std::fs::write(dir.join(V2_MEMORY_EVENTS), "low 0\noom 2\noom_kill 1\n").unwrap();
    assert_eq!(c.oom_kills("ns:a:p"), 1);
    assert_eq!(c.instances(), vec!["ns:a:p", "ns:b:p"]);
}

#[test]
fn v1_limits_are_written_in_each_hierarchy() {
    let t = tempfile::tempdir().unwrap();
    let (m, cpu, f) = (t.path().join("m"), t.path().join("c"), t.path().join("f"));
    for d in [&m, &cpu, &f] {
        std::fs::create_dir_all(d).unwrap();
    }
    let c = Cgroups::v1_at(m.clone(), cpu.clone(), Some(f.clone()));
    c.create(
        "shared:p",
        Limits {
            cpu: Some(1.5),
            memory: Some(1 << 30),
            pids: None,
        },
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(cpu.join("shared:p").join(V1_CFS_QUOTA)).unwrap(),
        "150000"
    );
    assert_eq!(
        std::fs::read_to_string(m.join("shared:p").join(V1_MEMORY_LIMIT)).unwrap(),
        (1u64 << 30).to_string()
    );
    // A child joins each hierarchy through `tasks`, not `cgroup.procs`.
    assert_eq!(
        c.join_files("shared:p"),
        [&m, &cpu, &f].map(|d| d.join("shared:p").join(V1_TASKS))
    );
    assert!(c.cheap_join());
    std::fs::write(m.join("shared:p").join(PROCS), "12\n13\n").unwrap();
    std::fs::write(f.join("shared:p").join(PROCS), "13\n14\n").unwrap();
    assert_eq!(c.pids("shared:p"), vec![12, 13, 14]);
    std::fs::write(
        m.join("shared:p").join(V1_OOM_CONTROL),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    )
    .unwrap();
    assert_eq!(c.oom_kills("shared:p"), 3);
}
