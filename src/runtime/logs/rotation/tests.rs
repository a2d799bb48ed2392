//! Tests of the rotation module.
use super::*;
use std::io::Write;

fn append(path: &Path, data: &[u8]) {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
        .write_all(data)
        .unwrap();
}

fn open(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

fn step(r: &mut Rotator, path: &Path) -> Option<Rotated> {
    let generations = Generations::default();
    r.on_change(path, &open(path), &generations).unwrap()
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| seed.wrapping_add((i % 251) as u8)).collect()
}

#[test]
fn a_file_that_fills_up_in_steps_is_kept_whole_in_dot_1() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("x.log");
    let mut r = Rotator::new(1000, 1);
    std::fs::write(suffixed(&p, ".1"), "previous generation").unwrap();
    let mut all = Vec::new();
    for (i, n) in [300, 300, 300, 150].into_iter().enumerate() {
        let data = bytes(n, i as u8);
        append(&p, &data);
        all.extend_from_slice(&data);
        let rotated = step(&mut r, &p);
        if all.len() < 1000 {
            assert!(rotated.is_none());
            // The previous generation stays until the new one is whole.
            assert_eq!(
                std::fs::read(suffixed(&p, ".1")).unwrap(),
                b"previous generation"
            );
        } else {
            let rotated = rotated.unwrap();
            assert_eq!((rotated.end, rotated.kept), (1050, 1050));
            assert!(rotated.copy_failed.is_none());
        }
    }
    assert_eq!(std::fs::read(suffixed(&p, ".1")).unwrap(), all);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
    assert!(!suffixed(&p, ".1.part").exists());
    // The next generation starts from the empty file.
    append(&p, b"next\n");
    assert!(step(&mut r, &p).is_none());
    assert_eq!(std::fs::read(&p).unwrap(), b"next\n");
}

#[test]
fn a_file_far_past_the_cap_keeps_only_its_last_cap_bytes() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("x.log");
    let data = bytes(10_000, 7);
    std::fs::write(&p, &data).unwrap();
    let mut r = Rotator::new(1000, 1);
    let rotated = step(&mut r, &p).unwrap();
    assert_eq!((rotated.end, rotated.kept), (10_000, 1000));
    assert_eq!(std::fs::read(suffixed(&p, ".1")).unwrap(), &data[9000..]);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
}

#[test]
fn a_generation_never_holds_more_than_a_quarter_past_the_cap() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("x.log");
    let mut r = Rotator::new(1000, 1);
    append(&p, &bytes(600, 1));
    assert!(step(&mut r, &p).is_none());
    append(&p, &bytes(5000, 2));
    let rotated = step(&mut r, &p).unwrap();
    assert_eq!((rotated.end, rotated.kept), (5600, 1250));
    assert_eq!(std::fs::metadata(suffixed(&p, ".1")).unwrap().len(), 1250);
}

#[test]
fn copies_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("x.log");
    let old = suffixed(&p, ".1");
    std::fs::write(&old, "old").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    append(&p, &bytes(2000, 3));
    step(&mut Rotator::new(1000, 1), &p).unwrap();
    let mode = std::fs::metadata(&old).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_file_truncated_by_someone_else_starts_a_new_copy() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("x.log");
    let mut r = Rotator::new(1000, 1);
    append(&p, &bytes(700, 1));
    assert!(step(&mut r, &p).is_none());
    std::fs::write(&p, b"").unwrap();
    assert!(step(&mut r, &p).is_none());
    assert!(!suffixed(&p, ".1.part").exists());
    let fresh = bytes(1100, 9);
    append(&p, &fresh);
    step(&mut r, &p).unwrap();
    // Found past the cap with no copy under way: its last cap bytes.
    assert_eq!(std::fs::read(suffixed(&p, ".1")).unwrap(), &fresh[100..]);
}

#[test]
fn each_truncation_tells_the_echo_how_much_the_generation_held() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("x.log");
    let generations = Generations::default();
    let mut r = Rotator::new(8 << 20, 1);
    let step = |r: &mut Rotator| r.on_change(&p, &open(&p), &generations).unwrap();
    append(&p, &bytes(3 << 20, 1));
    assert!(step(&mut r).is_none());
    append(&p, &bytes(7 << 20, 2));
    let rotated = step(&mut r).unwrap();
    assert_eq!((rotated.end, rotated.kept), (10 << 20, 10 << 20));
    let seen = generations.stable().unwrap();
    assert_eq!(seen.start, 10 << 20);
    assert!(generations.unchanged(seen));
    append(&p, &bytes(9 << 20, 3));
    let rotated = step(&mut r).unwrap();
    assert_eq!((rotated.end, rotated.kept), (9 << 20, 8 << 20));
    assert_eq!(generations.start(), 19 << 20);
    assert!(!generations.unchanged(seen));
}

#[test]
fn the_last_n_generations_are_kept_in_order_and_no_more() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("x.log");
    // Left by a larger --log-keep.
    std::fs::write(suffixed(&p, ".4"), "too old").unwrap();
    std::fs::write(suffixed(&p, ".5"), "too old").unwrap();
    let mut r = Rotator::new(1000, 3);
    for g in 0..5u8 {
        append(&p, &vec![b'a' + g; 1100]);
        let rotated = step(&mut r, &p).unwrap();
        assert_eq!((rotated.end, rotated.kept), (1100, 1000));
        // Once three are kept, each rotation drops the oldest.
        assert_eq!(rotated.replaced.is_some(), g >= 3, "rotation {g}");
        for n in 1..=3usize {
            let kept = std::fs::read(suffixed(&p, &format!(".{n}")));
            match g.checked_sub(n as u8 - 1) {
                Some(k) => assert_eq!(kept.unwrap(), vec![b'a' + k; 1000], "{g}: .{n}"),
                None => assert!(kept.is_err(), "{g}: .{n} exists"),
            }
        }
        assert!(!suffixed(&p, ".4").exists() && !suffixed(&p, ".5").exists());
    }
}

#[test]
fn a_planted_link_is_not_written_through_and_the_cap_still_holds() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("x.log");
    let victim = t.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, suffixed(&p, ".1.part")).unwrap();
    append(&p, &bytes(2000, 4));
    let mut r = Rotator::new(1000, 1);
    let rotated = step(&mut r, &p).unwrap();
    assert!(rotated.copy_failed.is_some());
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}
