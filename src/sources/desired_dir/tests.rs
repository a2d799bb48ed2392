//! Tests of the desired directory as a source, end to end: real files in
//! a temporary directory, real inotify, [`watch_desired`]'s thread, and the
//! [`FileEvent`]s it sends (parsed documents or read and parse errors).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::*;
use crate::spec::yaml::MAX_FILE_BYTES;

/// Generous: the watcher answers in milliseconds, CI machines are slow.
const PATIENCE: Duration = Duration::from_secs(10);

/// The next event, passing over [`FileEvent::Synced`] (tested on its own).
async fn next(rx: &mut UnboundedReceiver<FileEvent>) -> FileEvent {
    loop {
        let ev = match tokio::time::timeout(PATIENCE, rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("the watcher stopped"),
            Err(_) => panic!("no event within {PATIENCE:?}"),
        };
        if ev != FileEvent::Synced {
            return ev;
        }
    }
}

#[tokio::test]
async fn synced_follows_the_files_present_at_start() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("a.yaml"), doc("p", "a")).unwrap();
    std::fs::write(t.path().join("b.yaml"), doc("p", "b")).unwrap();
    let mut rx = watch_desired(t.path().to_path_buf(), Duration::from_secs(60));
    let mut names = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, rx.recv()).await {
            Ok(Some(FileEvent::Synced)) => break,
            Ok(Some(FileEvent::Changed { name, .. })) => names.push(name),
            other => panic!("unexpected {other:?}"),
        }
    }
    names.sort();
    assert_eq!(names, vec!["a.yaml", "b.yaml"]);
}

fn doc(pattern: &str, ns: &str) -> String {
    format!("pattern: {pattern}\nnamespace: {ns}\n")
}

/// The namespaces a Changed event declares, or the error text.
fn namespaces(ev: &FileEvent) -> Result<Vec<String>, String> {
    match ev {
        FileEvent::Changed { result, .. } => result
            .as_ref()
            .map(|docs| docs.iter().map(|d| d.namespace.clone()).collect())
            .map_err(ToString::to_string),
        FileEvent::Removed { .. } => Err("removed".into()),
        FileEvent::Synced => Err("synced".into()),
    }
}

fn name_of(ev: &FileEvent) -> &str {
    match ev {
        FileEvent::Changed { name, .. } | FileEvent::Removed { name } => name,
        FileEvent::Synced => "",
    }
}

/// Writes `name` and waits for its event, proving that everything the
/// watcher was told before has been handled.
async fn sentinel(dir: &Path, rx: &mut UnboundedReceiver<FileEvent>) -> Vec<FileEvent> {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = "zz-sentinel.yaml";
    // New content every time, so that it is always reported.
    std::fs::write(dir.join(name), doc("p", &format!("s{n}"))).unwrap();
    let mut before = Vec::new();
    loop {
        let ev = next(rx).await;
        if name_of(&ev) == name && matches!(ev, FileEvent::Changed { .. }) {
            return before;
        }
        if name_of(&ev) != name {
            before.push(ev);
        }
    }
}

fn watch(dir: &Path) -> UnboundedReceiver<FileEvent> {
    // Long rescans: these tests are about events.
    watch_desired(dir.to_path_buf(), Duration::from_secs(60))
}

#[tokio::test]
async fn creating_a_file_reports_its_documents() {
    let t = tempfile::tempdir().unwrap();
    let mut rx = watch(t.path());
    std::fs::write(t.path().join("a.yaml"), doc("p", "one")).unwrap();
    let ev = next(&mut rx).await;
    assert_eq!(name_of(&ev), "a.yaml");
    assert_eq!(namespaces(&ev), Ok(vec!["one".to_string()]));
}

#[tokio::test]
async fn editing_a_file_reports_the_new_content() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("a.yml"), doc("p", "one")).unwrap();
    let mut rx = watch(t.path());
    assert_eq!(namespaces(&next(&mut rx).await), Ok(vec!["one".into()]));
    std::fs::write(t.path().join("a.yml"), doc("p", "two")).unwrap();
    assert_eq!(namespaces(&next(&mut rx).await), Ok(vec!["two".into()]));
}

#[tokio::test]
async fn deleting_a_file_reports_it_removed() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("a.yaml"), doc("p", "one")).unwrap();
    let mut rx = watch(t.path());
    assert!(matches!(next(&mut rx).await, FileEvent::Changed { .. }));
    std::fs::remove_file(t.path().join("a.yaml")).unwrap();
    assert_eq!(
        next(&mut rx).await,
        FileEvent::Removed {
            name: "a.yaml".into()
        }
    );
}

#[tokio::test]
async fn renaming_a_file_away_reports_it_removed() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("a.yaml"), doc("p", "one")).unwrap();
    let mut rx = watch(t.path());
    assert!(matches!(next(&mut rx).await, FileEvent::Changed { .. }));
    std::fs::rename(t.path().join("a.yaml"), t.path().join("a.yaml.bak")).unwrap();
    assert_eq!(
        next(&mut rx).await,
        FileEvent::Removed {
            name: "a.yaml".into()
        }
    );
}

#[tokio::test]
async fn a_write_through_a_temporary_file_is_reported_once_and_whole() {
    use std::io::Write;
    let t = tempfile::tempdir().unwrap();
    let mut rx = watch(t.path());
    let full: String = (0..40)
        .map(|i| doc("p", &format!("ns{i}")))
        .collect::<Vec<_>>()
        .join("---\n");
    let cases = [
        (".a.yaml.tmp", "a.yaml"),
        ("b.tmp", "b.yaml"),
        ("a.yaml~", "a.yaml"),
    ];
    for (k, (tmp, name)) in cases.into_iter().enumerate() {
        let first = format!("case{k}");
        let full = full.replace("ns0", &first);
        let mut f = std::fs::File::create(t.path().join(tmp)).unwrap();
        let (head, tail) = full.split_at(full.len() / 2);
        f.write_all(head.as_bytes()).unwrap();
        f.sync_all().unwrap();
        f.write_all(tail.as_bytes()).unwrap();
        drop(f);
        std::fs::rename(t.path().join(tmp), t.path().join(name)).unwrap();
        let ev = next(&mut rx).await;
        assert_eq!(name_of(&ev), name);
        let ns = namespaces(&ev).unwrap();
        assert_eq!(ns.len(), 40);
        assert_eq!(ns[0], first);
        assert!(sentinel(t.path(), &mut rx).await.is_empty());
    }
}

#[tokio::test]
async fn dot_files_editor_files_and_other_names_are_ignored() {
    let t = tempfile::tempdir().unwrap();
    let mut rx = watch(t.path());
    for name in [
        ".a.yaml.swp",
        ".hidden.yaml",
        "notes.txt",
        "a.yaml~",
        "4913",
        "#a.yaml#",
    ] {
        std::fs::write(t.path().join(name), doc("p", "x")).unwrap();
    }
    std::fs::remove_file(t.path().join(".hidden.yaml")).unwrap();
    assert_eq!(sentinel(t.path(), &mut rx).await, Vec::new());
}

#[tokio::test]
async fn files_present_at_start_are_each_reported_once() {
    let t = tempfile::tempdir().unwrap();
    for i in 0..5 {
        std::fs::write(t.path().join(format!("f{i}.yaml")), doc("p", "x")).unwrap();
    }
    let mut rx = watch(t.path());
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(name_of(&next(&mut rx).await).to_string());
    }
    seen.sort();
    assert_eq!(
        seen,
        ["f0.yaml", "f1.yaml", "f2.yaml", "f3.yaml", "f4.yaml"]
    );
    assert!(sentinel(t.path(), &mut rx).await.is_empty());
}

#[tokio::test]
async fn a_rescan_finds_what_no_event_told() {
    // The directory does not exist yet, so nothing can be watched: only
    // the rescan can find the file, and it re-establishes the watch.
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("desired");
    let mut rx = watch_desired(dir.clone(), Duration::from_millis(20));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("late.yaml"), doc("p", "late")).unwrap();
    let ev = next(&mut rx).await;
    assert_eq!(name_of(&ev), "late.yaml");
    assert_eq!(namespaces(&ev), Ok(vec!["late".into()]));
    // Rescans that find nothing new send nothing, and events flow again.
    assert!(sentinel(&dir, &mut rx).await.is_empty());
    std::fs::remove_file(dir.join("late.yaml")).unwrap();
    assert_eq!(name_of(&next(&mut rx).await), "late.yaml");
}

#[tokio::test]
async fn a_deleted_and_recreated_directory_is_watched_again() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("desired");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), doc("p", "one")).unwrap();
    let mut rx = watch_desired(dir.clone(), Duration::from_millis(20));
    assert!(matches!(next(&mut rx).await, FileEvent::Changed { .. }));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        next(&mut rx).await,
        FileEvent::Removed {
            name: "a.yaml".into()
        }
    );
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), doc("p", "two")).unwrap();
    assert_eq!(namespaces(&next(&mut rx).await), Ok(vec!["two".into()]));
}

#[tokio::test]
async fn unreadable_and_invalid_files_are_reported_as_errors() {
    let t = tempfile::tempdir().unwrap();
    let mut rx = watch(t.path());
    std::fs::write(t.path().join("bin.yaml"), [b'a', 0xff, 0xfe]).unwrap();
    let e = namespaces(&next(&mut rx).await).unwrap_err();
    assert!(e.contains("bin.yaml") && e.contains("UTF-8"), "{e}");

    let big = "# padding\n".repeat((MAX_FILE_BYTES as usize) / 10 + 1);
    std::fs::write(t.path().join("big.yaml"), big).unwrap();
    let e = namespaces(&next(&mut rx).await).unwrap_err();
    assert!(e.contains("big.yaml") && e.contains("larger"), "{e}");

    std::fs::write(t.path().join("bad.yaml"), "pattern: p\ncolour: red\n").unwrap();
    let e = namespaces(&next(&mut rx).await).unwrap_err();
    assert!(e.contains("bad.yaml:2") && e.contains("colour"), "{e}");

    // A FIFO would block a plain open; it must not hang the watcher.
    nix::unistd::mkfifo(&t.path().join("fifo.yaml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let e = namespaces(&next(&mut rx).await).unwrap_err();
    assert!(e.contains("fifo.yaml") && e.contains("regular"), "{e}");

    // Fixing a file reports its good content.
    std::fs::write(t.path().join("bad.yaml"), doc("p", "fixed")).unwrap();
    assert_eq!(namespaces(&next(&mut rx).await), Ok(vec!["fixed".into()]));
}

#[tokio::test]
async fn three_hundred_files_created_at_once_are_each_reported() {
    let t = tempfile::tempdir().unwrap();
    let mut rx = watch(t.path());
    for i in 0..300 {
        std::fs::write(
            t.path().join(format!("f{i:03}.yaml")),
            doc("p", &format!("n{i}")),
        )
        .unwrap();
    }
    let mut got = BTreeMap::new();
    while got.len() < 300 {
        let ev = next(&mut rx).await;
        let ns = namespaces(&ev).unwrap();
        assert!(
            got.insert(name_of(&ev).to_string(), ns).is_none(),
            "twice: {ev:?}"
        );
    }
    for (i, (name, ns)) in got.iter().enumerate() {
        assert_eq!(name, &format!("f{i:03}.yaml"));
        assert_eq!(ns, &vec![format!("n{i}")]);
    }
    assert!(sentinel(t.path(), &mut rx).await.is_empty());
}

/// What the directory holds: name to namespace.
fn on_disk(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_candidate(n) && !n.starts_with("zz"))
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(&n)).unwrap();
            let docs = parse_desired(&text, &n).unwrap();
            (n, docs[0].namespace.clone())
        })
        .collect()
}

/// Applies events to a picture of the directory.
fn apply(picture: &mut BTreeMap<String, String>, ev: FileEvent) {
    if name_of(&ev).starts_with("zz") {
        return;
    }
    match ev {
        FileEvent::Changed { name, result } => {
            let docs = result.unwrap_or_else(|e| panic!("half-written file reported: {e}"));
            let ns = docs.first().map(|d| d.namespace.clone());
            assert!(
                ns.as_ref()
                    .is_some_and(|ns| ns.starts_with('v') || ns == "same"),
                "half-written file reported: {name}: {docs:?}"
            );
            picture.insert(name, ns.unwrap_or_default());
        }
        FileEvent::Removed { name } => {
            picture.remove(&name);
        }
        FileEvent::Synced => {}
    }
}

/// Applies events until the picture they paint is `want` at a moment
/// when every event the watcher sent before is known to have been
/// handled (the sentinel's). From then on the watcher holds the
/// directory's final state, so it has nothing left to report.
async fn settle(dir: &Path, rx: &mut UnboundedReceiver<FileEvent>, want: BTreeMap<String, String>) {
    let mut picture = BTreeMap::new();
    loop {
        while picture != want {
            apply(&mut picture, next(rx).await);
        }
        for ev in sentinel(dir, rx).await {
            apply(&mut picture, ev);
        }
        if picture == want {
            return;
        }
    }
}

#[tokio::test]
async fn a_burst_of_changes_ends_in_the_right_picture() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let mut rx = watch(dir);
    // A fixed xorshift: the same burst every run.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for op in 0..3000 {
        let name = format!("n{:02}.yaml", rand(50));
        let path = dir.join(&name);
        let content = doc("p", &format!("v{op}"));
        match rand(4) {
            0 => {
                let _ = std::fs::remove_file(&path);
            }
            1 => {
                let tmp = dir.join(format!(".{name}.tmp"));
                std::fs::write(&tmp, &content).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
            }
            _ => std::fs::write(&path, &content).unwrap(),
        }
    }
    let want = on_disk(dir);
    settle(dir, &mut rx, want).await;
}

#[tokio::test]
async fn a_file_deleted_and_recreated_ends_reported_with_its_content() {
    let t = tempfile::tempdir().unwrap();
    let mut rx = watch(t.path());
    let path = t.path().join("a.yaml");
    for _ in 0..50 {
        std::fs::write(&path, doc("p", "same")).unwrap();
        std::fs::remove_file(&path).unwrap();
    }
    std::fs::write(&path, doc("p", "same")).unwrap();
    let want = on_disk(t.path());
    assert_eq!(want.len(), 1);
    settle(t.path(), &mut rx, want).await;
}
