//! The file store survives restarts, torn tails and compaction, and refuses a
//! second owner and real corruption.

use std::io::Write;

use super::*;
use crate::registry::Stage;
use crate::registry::record::Action;

fn record(revision: u64, version: &str) -> Record {
    Record {
        revision,
        time: "2026-11-27T09:00:00.000Z".into(),
        actor: "t".into(),
        action: Action::Register,
        model: "m".into(),
        version: version.into(),
        from: None,
        to: Some(Stage::Staging),
        reason: String::new(),
        endpoints: vec![format!("http://v{version}:1")],
        grpc_endpoints: vec![format!("http://v{version}:2")],
        upstream_model: None,
        also: vec![],
        shadow: None,
        canary: None,
        rollout: None,
        observed: None,
    }
}

fn append_all(store: &mut FileStore, records: &[Record]) {
    for r in records {
        store.append(r).unwrap();
    }
}

fn raw_append(dir: &Path, bytes: &[u8]) {
    let mut file = OpenOptions::new()
        .append(true)
        .open(dir.join(JOURNAL))
        .unwrap();
    file.write_all(bytes).unwrap();
}

#[test]
fn appended_records_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, loaded) = FileStore::open(dir.path()).unwrap();
    assert_eq!(loaded.ledger, Ledger::default());
    append_all(&mut store, &[record(1, "1"), record(2, "2")]);
    drop(store);

    let (store, loaded) = FileStore::open(dir.path()).unwrap();
    assert_eq!(loaded.ledger.revision, 2);
    assert_eq!(loaded.ledger.stage("m", "2"), Some(Stage::Staging));
    assert!(loaded.warnings.is_empty());
    assert_eq!(store.records_since_snapshot(), 2);
}

#[test]
fn a_second_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_first, _) = FileStore::open(dir.path()).unwrap();
    let Err(error) = FileStore::open(dir.path()) else {
        panic!("a second open must fail");
    };
    assert!(matches!(error, StoreError::Locked { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("in use by another stagegate process"),
        "{message}"
    );
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
}

#[test]
fn a_torn_tail_is_cut_off_with_a_warning_and_appends_continue() {
    for tail in [
        &b"{\"revision\":3,\"time\":\"2026"[..],
        b"garbage\n",
        b"\0\0\0\0\0\0",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = FileStore::open(dir.path()).unwrap();
        append_all(&mut store, &[record(1, "1"), record(2, "2")]);
        drop(store);
        raw_append(dir.path(), tail);

        let (mut store, loaded) = FileStore::open(dir.path()).unwrap();
        assert_eq!(loaded.ledger.revision, 2);
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(
            loaded.warnings[0].contains("torn last record"),
            "{:?}",
            loaded.warnings
        );
        store.append(&record(3, "3")).unwrap();
        drop(store);

        let (_, loaded) = FileStore::open(dir.path()).unwrap();
        assert_eq!(loaded.ledger.revision, 3);
        assert!(
            loaded.warnings.is_empty(),
            "the repair is durable: {:?}",
            loaded.warnings
        );
    }
}

#[test]
fn corruption_followed_by_valid_records_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = FileStore::open(dir.path()).unwrap();
    store.append(&record(1, "1")).unwrap();
    drop(store);
    raw_append(dir.path(), b"not json\n");
    let mut line = serde_json::to_vec(&record(2, "2")).unwrap();
    line.push(b'\n');
    raw_append(dir.path(), &line);
    let Err(error) = FileStore::open(dir.path()) else {
        panic!("corruption must stop start-up");
    };
    assert!(
        matches!(error, StoreError::CorruptJournal { line: 2, .. }),
        "{error}"
    );
}

#[test]
fn gaps_in_revisions_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = FileStore::open(dir.path()).unwrap();
    append_all(&mut store, &[record(1, "1"), record(3, "3")]);
    drop(store);
    let Err(error) = FileStore::open(dir.path()) else {
        panic!("a gap must stop start-up");
    };
    assert!(
        error.to_string().contains("does not follow revision 1"),
        "{error}"
    );
}

#[test]
fn compaction_keeps_the_ledger_and_empties_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = FileStore::open(dir.path()).unwrap();
    append_all(&mut store, &[record(1, "1"), record(2, "2")]);
    let (_, mut ledger) = (0, Ledger::default());
    ledger.apply(Arc::new(record(1, "1"))).unwrap();
    ledger.apply(Arc::new(record(2, "2"))).unwrap();
    store.compact(&ledger).unwrap();
    assert_eq!(store.records_since_snapshot(), 0);
    assert_eq!(fs::metadata(dir.path().join(JOURNAL)).unwrap().len(), 0);
    store.append(&record(3, "3")).unwrap();
    drop(store);

    let (_, loaded) = FileStore::open(dir.path()).unwrap();
    assert_eq!(loaded.ledger.revision, 3);
    assert_eq!(loaded.ledger.model("m").unwrap().versions.len(), 3);
}

#[test]
fn records_already_in_the_snapshot_are_skipped_on_replay() {
    // A crash after the snapshot was renamed into place but before the journal was
    // emptied leaves records the snapshot already covers.
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = FileStore::open(dir.path()).unwrap();
    append_all(&mut store, &[record(1, "1"), record(2, "2")]);
    let journal = fs::read(dir.path().join(JOURNAL)).unwrap();
    let mut ledger = Ledger::default();
    ledger.apply(Arc::new(record(1, "1"))).unwrap();
    ledger.apply(Arc::new(record(2, "2"))).unwrap();
    store.compact(&ledger).unwrap();
    drop(store);
    raw_append(dir.path(), &journal);

    let (_, loaded) = FileStore::open(dir.path()).unwrap();
    assert_eq!(loaded.ledger, ledger);
}

#[test]
fn a_corrupt_snapshot_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(SNAPSHOT), b"{\"format\":1,").unwrap();
    let Err(error) = FileStore::open(dir.path()) else {
        panic!("a corrupt snapshot must stop start-up");
    };
    assert!(
        matches!(error, StoreError::CorruptSnapshot { .. }),
        "{error}"
    );
}

#[test]
fn a_repeated_revision_after_the_snapshot_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = FileStore::open(dir.path()).unwrap();
    append_all(&mut store, &[record(1, "1"), record(2, "2")]);
    drop(store);
    let mut line = serde_json::to_vec(&record(2, "other")).unwrap();
    line.push(b'\n');
    raw_append(dir.path(), &line);
    let mut line3 = serde_json::to_vec(&record(3, "3")).unwrap();
    line3.push(b'\n');
    raw_append(dir.path(), &line3);
    let Err(error) = FileStore::open(dir.path()) else {
        panic!("a repeated revision must stop start-up");
    };
    assert!(
        matches!(error, StoreError::CorruptJournal { line: 3, .. }),
        "{error}"
    );
}
