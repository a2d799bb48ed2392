//! Unit tests of the desired watcher's state machine: made-up inotify
//! events fed to [`DesiredWatcher::absorb`], and what it decides to read
//! now, later or not at all. No thread, no file system.

use notify::Event;

use super::*;

fn machine() -> DesiredWatcher {
    let (tx, _rx) = unbounded_channel();
    let mut w = DesiredWatcher::new(PathBuf::from("/d"), tx);
    w.rescan = false;
    w
}

fn event(kind: EventKind, path: &str) -> Raw {
    Ok(Event::new(kind).add_path(PathBuf::from(path)))
}

fn step(w: &mut DesiredWatcher, kind: EventKind, path: &str) -> HashSet<String> {
    let mut touched = HashSet::new();
    w.absorb(event(kind, path), &mut touched);
    touched
}

const CLOSE_WRITE: EventKind = EventKind::Access(AccessKind::Close(AccessMode::Write));
const OPEN: EventKind = EventKind::Access(AccessKind::Open(notify::event::AccessMode::Any));

#[test]
fn a_finished_write_is_read_at_once_and_one_in_progress_waits() {
    let mut w = machine();
    step(&mut w, EventKind::Create(CreateKind::File), "/d/a.yaml");
    assert!(w.now.is_empty());
    assert!(w.writing.contains("a.yaml"));
    let quiet = w.pending["a.yaml"].saturating_duration_since(Instant::now());
    assert!(quiet > QUIET, "{quiet:?}");
    let touched = step(&mut w, CLOSE_WRITE, "/d/a.yaml");
    assert!(touched.contains("a.yaml"));
    assert!(w.now.contains("a.yaml"));
    assert!(w.pending.is_empty() && w.writing.is_empty());
    // A new writer after the close: wait for it instead.
    step(
        &mut w,
        EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any)),
        "/d/a.yaml",
    );
    assert!(w.now.is_empty());
    assert!(w.pending.contains_key("a.yaml"));
}

#[test]
fn renames_and_removals_are_read_at_once() {
    let mut w = machine();
    step(
        &mut w,
        EventKind::Modify(ModifyKind::Name(RenameMode::To)),
        "/d/a.yaml",
    );
    step(
        &mut w,
        EventKind::Remove(notify::event::RemoveKind::File),
        "/d/b.yml",
    );
    let mut now: Vec<_> = w.now.iter().cloned().collect();
    now.sort();
    assert_eq!(now, ["a.yaml", "b.yml"]);
}

#[test]
fn an_open_by_someone_else_postpones_a_read_that_was_due() {
    let mut w = machine();
    step(&mut w, CLOSE_WRITE, "/d/a.yaml");
    let touched = step(&mut w, OPEN, "/d/a.yaml");
    assert!(touched.contains("a.yaml"));
    assert!(w.now.is_empty());
    assert!(w.pending.contains_key("a.yaml"));
}

#[test]
fn the_watchers_own_opens_are_not_taken_for_a_writer() {
    let mut w = machine();
    w.own_opens.insert("a.yaml".into(), 1);
    step(&mut w, CLOSE_WRITE, "/d/a.yaml");
    let touched = step(&mut w, OPEN, "/d/a.yaml");
    assert!(!touched.contains("a.yaml"));
    assert!(w.now.contains("a.yaml"));
    assert!(w.own_opens.is_empty());
}

#[test]
fn ignored_names_and_reads_change_nothing() {
    let mut w = machine();
    for path in ["/d/.a.yaml.swp", "/d/notes.txt", "/elsewhere/a.yaml"] {
        assert!(step(&mut w, CLOSE_WRITE, path).is_empty());
    }
    let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
    assert!(step(&mut w, read, "/d/a.yaml").is_empty());
    assert!(w.now.is_empty() && w.pending.is_empty() && !w.rescan);
}

#[test]
fn an_overflow_or_the_directory_going_away_asks_for_a_rescan() {
    let mut w = machine();
    w.own_opens.insert("a.yaml".into(), 1);
    let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
    w.absorb(Ok(overflow), &mut HashSet::new());
    assert!(w.rescan);
    assert_eq!(w.lost, 1);
    assert!(w.own_opens.is_empty());

    let mut w = machine();
    step(&mut w, OPEN, "/d");
    assert!(!w.rescan, "opening the directory is not a change");
    assert_eq!(w.dir_opens_seen, 1);
    step(
        &mut w,
        EventKind::Remove(notify::event::RemoveKind::Folder),
        "/d",
    );
    assert!(w.rescan);
    assert_eq!(w.lost, 0);
}
