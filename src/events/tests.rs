//! The event log's promises: revisions grow, a replay has no gap and no
//! duplicate, old revisions are refused by name, a reader that does not
//! read is cut off without slowing the writer.

use super::*;

fn ev(reason: Reason, id: &str) -> NewEvent {
    NewEvent {
        process_id: id.to_string(),
        namespace: id.split(':').nth(1).unwrap_or_default().to_string(),
        pattern: id.split(':').next().unwrap_or_default().to_string(),
        ..NewEvent::general(reason, format!("{} of {id}", reason.as_str()))
    }
}

fn drain(rx: &mut mpsc::Receiver<Item>) -> Vec<Item> {
    let mut v = Vec::new();
    while let Ok(i) = rx.try_recv() {
        v.push(i);
    }
    v
}

fn revisions(items: &[Item]) -> Vec<u64> {
    items
        .iter()
        .map(|i| match i {
            Item::Event(e) => e.revision,
            Item::Lagged(r) => panic!("cut off at {r}"),
        })
        .collect()
}

#[test]
fn the_log_starts_with_the_launcher_and_revisions_grow_by_one() {
    let log = EventLog::in_memory();
    assert_eq!(log.latest(), 1);
    log.append(vec![
        ev(Reason::Declared, "p:a"),
        ev(Reason::Spawned, "p:a"),
    ]);
    assert_eq!(log.latest(), 3);
    let Start::Replay(all) = log.subscribe(1, Filter::default()).unwrap().start else {
        panic!("a replay")
    };
    let reasons: Vec<Reason> = all.iter().map(|e| e.event.reason).collect();
    assert_eq!(reasons, [Reason::Declared, Reason::Spawned]);
    assert_eq!(all[0].revision, 2);
}

#[test]
fn a_replay_then_live_events_have_no_gap_and_no_duplicate() {
    let log = EventLog::in_memory();
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            // Fewer than the queue holds after the subscription below, so
            // that the reader, which drains only at the end, is never cut off.
            for i in 0..1200 {
                log.append(vec![ev(Reason::Healthy, &format!("p:{}", i % 7))]);
            }
        })
    };
    // Subscribe while the writer is busy, from a revision in the middle.
    while log.latest() < 500 {
        std::thread::yield_now();
    }
    let mut sub = log.subscribe(400, Filter::default()).unwrap();
    writer.join().unwrap();
    let Start::Replay(replayed) = sub.start else {
        panic!("a replay")
    };
    let mut seen: Vec<u64> = replayed.iter().map(|e| e.revision).collect();
    seen.extend(revisions(&drain(&mut sub.live)));
    let want: Vec<u64> = (401..=log.latest()).collect();
    assert_eq!(seen, want);
}

#[test]
fn a_revision_older_than_the_history_kept_is_refused_naming_the_oldest() {
    let log = EventLog::in_memory();
    for _ in 0..RETAINED + 10 {
        log.append(vec![ev(Reason::Healthy, "p:a")]);
    }
    let oldest = log.oldest();
    assert_eq!(oldest, log.latest() - RETAINED as u64 + 1);
    let err = log.subscribe(3, Filter::default()).unwrap_err();
    assert_eq!(err, SubscribeError::TooOld { asked: 3, oldest });
    assert!(err.to_string().contains(&oldest.to_string()), "{err}");
    // The revision just before the oldest kept is still whole.
    assert!(log.subscribe(oldest - 1, Filter::default()).is_ok());
}

#[test]
fn a_revision_from_before_this_life_or_ahead_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = EventLog::new(Revisions::open(dir.path()));
    first.append(vec![ev(Reason::Declared, "p:a")]);
    let last_of_first_life = first.latest();
    let second = EventLog::new(Revisions::open(dir.path()));
    assert!(second.latest() > last_of_first_life);
    assert!(matches!(
        second.subscribe(last_of_first_life, Filter::default()),
        Err(SubscribeError::TooOld { .. })
    ));
    assert!(matches!(
        second.subscribe(second.latest() + 1, Filter::default()),
        Err(SubscribeError::Ahead { .. })
    ));
}

#[test]
fn a_reader_that_does_not_read_is_cut_off_and_told_where_to_resume() {
    let log = EventLog::in_memory();
    let mut slow = log.subscribe(0, Filter::default()).unwrap();
    let mut fast = log.subscribe(0, Filter::default()).unwrap();
    let mut fast_seen = Vec::new();
    for _ in 0..QUEUE * 3 {
        log.append(vec![ev(Reason::Healthy, "p:a")]);
        fast_seen.extend(revisions(&drain(&mut fast.live)));
    }
    // The fast reader got everything; the slow one its queue, then the
    // notice naming the last revision it was sent.
    assert_eq!(fast_seen.len(), QUEUE * 3);
    let slow_items = drain(&mut slow.live);
    assert_eq!(slow_items.len(), QUEUE + 1);
    let Some(Item::Lagged(at)) = slow_items.last() else {
        panic!("no notice: {:?}", slow_items.last())
    };
    let Some(Item::Event(last)) = slow_items.get(QUEUE - 1) else {
        panic!("no event before the notice")
    };
    assert_eq!(*at, last.revision);
    // Cut off: no more for it, and it is no longer held.
    log.append(vec![ev(Reason::Healthy, "p:a")]);
    assert!(slow.live.try_recv().is_err());
    assert_eq!(log.lock().subscribers.len(), 1);
    // Resuming from there misses nothing.
    let Start::Replay(rest) = log.subscribe(*at, Filter::default()).unwrap().start else {
        panic!("a replay")
    };
    assert_eq!(rest.first().map(|e| e.revision), Some(at + 1));
}

#[test]
fn filters_pick_instances_namespaces_and_patterns() {
    let log = EventLog::in_memory();
    let by_ns = Filter {
        namespace: "t1".into(),
        ..Filter::default()
    };
    let by_pattern = Filter {
        pattern: "q".into(),
        ..Filter::default()
    };
    let mut ns = log.subscribe(0, by_ns).unwrap();
    let mut pat = log.subscribe(0, by_pattern).unwrap();
    log.append(vec![
        ev(Reason::Spawned, "p:t1"),
        ev(Reason::Spawned, "p:t2"),
        ev(Reason::Spawned, "q:t2"),
        NewEvent {
            pattern: "q".into(),
            ..NewEvent::general(Reason::PatternChanged, "q changed".into())
        },
    ]);
    let ids = |items: Vec<Item>| -> Vec<String> {
        items
            .into_iter()
            .map(|i| match i {
                Item::Event(e) => format!("{}{}", e.event.process_id, e.event.pattern),
                Item::Lagged(_) => "lagged".into(),
            })
            .collect()
    };
    assert_eq!(ids(drain(&mut ns.live)), ["p:t1p"]);
    assert_eq!(ids(drain(&mut pat.live)), ["q:t2q", "q"]);
}

#[test]
fn counts_and_recent_events_are_kept_by_instance() {
    let log = EventLog::in_memory();
    for i in 0..60 {
        log.append(vec![ev(Reason::Healthy, "p:a"), ev(Reason::Exited, "p:b")]);
        if i == 0 {
            log.append(vec![ev(Reason::Declared, "p:a")]);
        }
    }
    let recent = log.recent("p:a", 50);
    assert_eq!(recent.len(), 50);
    assert!(recent.windows(2).all(|w| w[0].revision < w[1].revision));
    assert!(recent.iter().all(|e| e.event.process_id == "p:a"));
    let counts: std::collections::HashMap<Reason, u64> = log.counts().into_iter().collect();
    assert_eq!(counts[&Reason::Healthy], 60);
    assert_eq!(counts[&Reason::Exited], 60);
    assert_eq!(counts[&Reason::LauncherStarted], 1);
}

#[test]
fn a_snapshot_start_lists_the_instances_at_the_latest_revision() {
    let log = EventLog::in_memory();
    let mut snap = Snapshot::default();
    let status = |id: &str| Arc::new(InstanceStatus::sample(id, "p", id.trim_start_matches("p:")));
    for id in ["p:a", "p:b"] {
        snap.instances.insert(id.to_string(), status(id));
    }
    log.publish(vec![ev(Reason::Healthy, "p:a")], Arc::new(snap));
    let only_b = Filter {
        process_id: "p:b".into(),
        ..Filter::default()
    };
    let Start::Snapshot {
        revision,
        instances,
    } = log.subscribe(0, only_b).unwrap().start
    else {
        panic!("a snapshot")
    };
    assert_eq!(revision, log.latest());
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].process_id, "p:b");
}

#[test]
fn a_limited_reader_queues_only_what_it_may_see() {
    let log = EventLog::in_memory();
    let within = crate::authz::Limits {
        namespaces: Some(["a".to_string()].into()),
        patterns: None,
    };
    let only_a = Filter {
        within: Some(Arc::new(within)),
        ..Filter::default()
    };
    let mut tenant = log.subscribe(0, only_a).unwrap();
    // Others' events, more than its queue holds, while it does not read.
    for _ in 0..QUEUE * 3 {
        log.append(vec![ev(Reason::Healthy, "p:b")]);
    }
    log.append(vec![ev(Reason::Healthy, "p:a")]);
    let items = drain(&mut tenant.live);
    let revs = revisions(&items);
    assert_eq!(revs.len(), 1, "not cut off, and only its own");
    let Item::Event(e) = &items[0] else {
        unreachable!()
    };
    assert_eq!(e.event.process_id, "p:a");
}
