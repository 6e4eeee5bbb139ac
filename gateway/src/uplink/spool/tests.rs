use super::*;

fn record(i: u64) -> Record {
    Record {
        topic: format!("dt/t-{}/n", i % 3),
        payload: Bytes::from(format!("message {i}")),
        qos: 1,
        retain: i.is_multiple_of(5),
    }
}

fn numbers(records: &[(u64, Record)]) -> Vec<u64> {
    records.iter().map(|(seq, _)| *seq).collect()
}

fn segment_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(SEGMENT_SUFFIX)
        })
        .count()
}

/// A spool holding records 0, 1 and 2, closed; its directory and its one segment's path.
fn three_records_closed() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    spool
        .append(&(0..3).map(record).collect::<Vec<_>>())
        .unwrap();
    drop(spool);
    let segment = segment_path(dir.path(), 0);
    (dir, segment)
}

#[test]
fn records_read_back_as_written_and_survive_a_reopen_from_the_cursor_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    let records: Vec<Record> = (0..10).map(record).collect();
    assert_eq!(spool.append(&records[..4]).unwrap(), 0);
    assert_eq!(spool.append(&records[4..]).unwrap(), 4);
    let read = spool.read(0, 100).unwrap();
    assert_eq!(numbers(&read), (0..10).collect::<Vec<_>>());
    assert!(read.iter().all(|(seq, r)| *r == records[*seq as usize]));
    spool.acknowledge(6).unwrap();
    drop(spool);

    // No sync: what a killed process wrote is in the files all the same.
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((spool.acked(), spool.next_seq()), (6, 10));
    let read = spool.read(0, 100).unwrap();
    assert_eq!(
        numbers(&read),
        [6, 7, 8, 9],
        "acknowledged records are not resent"
    );
    assert_eq!(spool.append(&[record(10)]).unwrap(), 10);
}

#[test]
fn reads_continue_where_the_last_one_ended_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    // The smallest bound: 64 KiB segments, a few hundred records each.
    let mut spool = Spool::open(dir.path(), SEGMENT_MIN * 8).unwrap();
    let big = |i: u64| Record {
        payload: Bytes::from(vec![b'x'; 1000 + (i % 7) as usize]),
        ..record(i)
    };
    let records: Vec<Record> = (0..300).map(big).collect();
    spool.append(&records).unwrap();
    assert!(segment_files(dir.path()) >= 4, "several segments");
    let mut seen = Vec::new();
    let mut from = 0;
    loop {
        let batch = spool.read(from, 37).unwrap();
        let Some((last, _)) = batch.last() else { break };
        from = last + 1;
        seen.extend(batch);
    }
    assert_eq!(numbers(&seen), (0..300).collect::<Vec<_>>());
    assert!(seen.iter().all(|(seq, r)| *r == records[*seq as usize]));
    // Reading again from an earlier point seeks back.
    assert_eq!(numbers(&spool.read(150, 2).unwrap()), [150, 151]);
}

#[test]
fn a_torn_last_record_is_cut_off_and_appending_goes_on_after_the_last_whole_one() {
    let (dir, segment) = three_records_closed();
    let len = fs::metadata(&segment).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(spool.next_seq(), 2, "the torn third record is gone");
    spool.append(&[record(7)]).unwrap();
    let read = spool.read(0, 10).unwrap();
    assert_eq!(numbers(&read), [0, 1, 2]);
    assert_eq!(read[2].1, record(7));
}

#[test]
fn a_damaged_record_ends_what_is_trusted_of_its_segment() {
    let (dir, segment) = three_records_closed();
    let mut bytes = fs::read(&segment).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&segment, bytes).unwrap();
    let spool = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(spool.next_seq(), 2);
}

#[test]
fn acknowledged_segments_are_removed_and_the_bound_drops_the_oldest_counted() {
    let dir = tempfile::tempdir().unwrap();
    let limit = SEGMENT_MIN * 8;
    let mut spool = Spool::open(dir.path(), limit).unwrap();
    let big = |i: u64| Record {
        payload: Bytes::from(vec![b'y'; 4000]),
        ..record(i)
    };
    spool.append(&(0..50).map(big).collect::<Vec<_>>()).unwrap();
    let before = segment_files(dir.path());
    spool.acknowledge(40).unwrap();
    assert!(
        segment_files(dir.path()) < before,
        "wholly acknowledged segments go"
    );
    assert_eq!(numbers(&spool.read(0, 3).unwrap()), [40, 41, 42]);

    // Four times the bound: the oldest segments go, their unacknowledged records counted.
    let total = 4 * limit / 4000;
    for i in 50..50 + total {
        spool.append(&[big(i)]).unwrap();
    }
    assert!(spool.bytes() <= limit, "{} > {limit}", spool.bytes());
    let kept = spool.next_seq() - spool.acked();
    assert_eq!(
        spool.dropped() + kept,
        50 + total - 40,
        "every record kept or counted"
    );
    let first = spool.read(0, 1).unwrap();
    assert_eq!(
        numbers(&first),
        [spool.acked()],
        "reading resumes at the oldest kept"
    );
    drop(spool);
    let spool = Spool::open(dir.path(), limit).unwrap();
    assert_eq!(spool.next_seq() - spool.acked(), kept);
}

#[test]
fn a_damaged_cursor_resends_from_the_oldest_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    spool
        .append(&(0..5).map(record).collect::<Vec<_>>())
        .unwrap();
    spool.acknowledge(3).unwrap();
    drop(spool);
    fs::write(dir.path().join(CURSOR_FILE), b"garbage garbage").unwrap();
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(numbers(&spool.read(0, 10).unwrap()), [0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn the_spool_thread_confirms_appends_and_reports_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let handle = spawn(Spool::open(dir.path(), 1 << 20).unwrap(), None).unwrap();
    let mut position = handle.position();
    let (taken, confirmed) = oneshot::channel();
    handle.push(record(0), Some(taken)).await.unwrap();
    confirmed.await.expect("confirmed once in the file");
    handle.push(record(1), None).await.unwrap();
    position
        .wait_for(|p| p.next_seq == 2)
        .await
        .expect("the thread runs");
    let read = handle.read(0, 10).await.unwrap();
    assert_eq!(
        numbers(&read),
        [0, 1],
        "a read sees what the position says was appended"
    );
    assert_eq!(numbers(&handle.read(1, 10).await.unwrap()), [1]);
    handle.acknowledge(1).await.unwrap();
    let now = *position
        .wait_for(|p| p.acked == 1)
        .await
        .expect("the thread runs");
    assert_eq!(now.next_seq, 2);
    // The cursor and the records are in the files (another process could read them now).
    let reopened = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((reopened.acked(), reopened.next_seq()), (1, 2));
}
