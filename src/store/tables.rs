//! The store's tables inside the redb file, and the two things done with them: applying an
//! [`Op`] inside a write transaction, and reading everything back at start-up.
//!
//! No threads and no queue here (that is [`super::writer`]); no byte layout of rows either (that
//! is [`super::codec`]). Every table maps bytes to bytes, so redb never interprets a row and the
//! strict codec is the only decoder.
//!
//! | table            | key                                  | value                      |
//! |------------------|--------------------------------------|----------------------------|
//! | `jobs`           | job id (16 bytes)                    | [`JobRow`]                 |
//! | `jobs_finished`  | `finished_at_ms` (8, big-endian), id | empty: the sweep's index   |
//! | `deliveries`     | job id (16 bytes), callback URL      | [`DeliveryRow`]            |
//! | `sends`          | limiter name (UTF-8)                 | [`SendsRow`]               |
//! | `meta`           | name (`&str`)                        | see the `META_*` constants |
//!
//! The finished index is keyed by time first so that a sweep reads only the expired entries.

use std::fmt::Write as _;
use std::path::Path;

use redb::{ReadableTable, StorageError, Table, TableDefinition, WriteTransaction};

use super::codec::{decode_u64, encode_u64, CallbackState, DeliveryRow, JobRow, Record, SendsRow};
use super::{Op, Recovered};

pub(super) const JOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("jobs");
pub(super) const FINISHED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("jobs_finished");
pub(super) const DELIVERIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("deliveries");
pub(super) const SENDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sends");
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// `meta` key: the store layout version, a `u64`. A file of another version is refused.
pub(super) const META_FORMAT: &str = "format";
/// `meta` key: the last heartbeat, unix ms, a `u64`.
pub(super) const META_HEARTBEAT: &str = "heartbeat_ms";
/// `meta` key: present (with an empty value) only after a clean shutdown.
pub(super) const META_CLEAN: &str = "clean_shutdown";

/// The layout of tables and keys described above. Bumped when it changes incompatibly.
pub(super) const FORMAT_VERSION: u64 = 1;

/// Most index entries one sweep op looks at, so that a large backlog (first sweep after a long
/// stop) is worked off over several commits instead of one huge transaction that holds up the
/// durable puts queued behind it.
pub(super) const MAX_SWEEP_VISITS: usize = 10_000;

/// Length of a job id.
const ID_LEN: usize = 16;

/// An op that could not be applied. `Storage` aborts the whole batch (the transaction may be
/// broken); `Skipped` affects only this op (its row is missing or unreadable, or the op is
/// inconsistent), and the rest of the batch is committed.
pub(super) enum ApplyError {
    Storage(StorageError),
    Skipped(String),
}

impl From<StorageError> for ApplyError {
    fn from(e: StorageError) -> ApplyError {
        ApplyError::Storage(e)
    }
}

/// What one op did, for the counters.
#[derive(Default)]
pub(super) struct Applied {
    pub swept: u64,
}

/// The tables open in one write transaction.
pub(super) struct Tables<'txn> {
    jobs: Table<'txn, &'static [u8], &'static [u8]>,
    finished: Table<'txn, &'static [u8], &'static [u8]>,
    deliveries: Table<'txn, &'static [u8], &'static [u8]>,
    sends: Table<'txn, &'static [u8], &'static [u8]>,
    meta: Table<'txn, &'static str, &'static [u8]>,
    /// Reused for every row encoded in the transaction.
    scratch: Vec<u8>,
}

impl<'txn> Tables<'txn> {
    /// Opens (creating on first use) every table.
    pub(super) fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, redb::TableError> {
        Ok(Tables {
            jobs: txn.open_table(JOBS)?,
            finished: txn.open_table(FINISHED)?,
            deliveries: txn.open_table(DELIVERIES)?,
            sends: txn.open_table(SENDS)?,
            meta: txn.open_table(META)?,
            scratch: Vec::new(),
        })
    }

    /// Applies one op.
    pub(super) fn apply(&mut self, op: Op) -> Result<Applied, ApplyError> {
        match op {
            Op::PutJob(row) => self.put_job(&row, None).map(|_| Applied::default()),
            Op::JobProgress {
                id,
                attempts,
                next_attempt_at_ms,
                status,
                last_upstream_status,
            } => {
                if status.is_finished() {
                    return Err(ApplyError::Skipped(format!(
                        "job {}: progress to the final status {status:?} (use JobFinished)",
                        hex(&id)
                    )));
                }
                let mut row = self.job(&id)?;
                let old = row.clone();
                row.attempts = attempts;
                row.next_attempt_at_ms = next_attempt_at_ms;
                row.status = status;
                row.last_upstream_status = last_upstream_status;
                row.finished_at_ms = None;
                self.put_job(&row, Some(&old)).map(|_| Applied::default())
            }
            Op::JobFinished {
                id,
                status,
                attempts,
                last_upstream_status,
                finished_at_ms,
                result,
            } => {
                if !status.is_finished() {
                    return Err(ApplyError::Skipped(format!(
                        "job {}: finished with the open status {status:?}",
                        hex(&id)
                    )));
                }
                let mut row = self.job(&id)?;
                let old = row.clone();
                row.status = status;
                row.attempts = attempts;
                row.last_upstream_status = last_upstream_status;
                row.next_attempt_at_ms = None;
                row.finished_at_ms = Some(finished_at_ms);
                row.result = result;
                // The request is never sent again: keeping it would only hold possibly
                // sensitive bytes on disk for the whole retention time.
                row.request = Vec::new();
                self.put_job(&row, Some(&old)).map(|_| Applied::default())
            }
            Op::PutDelivery(row) => {
                let key = delivery_key(&row.job_id, &row.url);
                self.scratch.clear();
                row.encode(&mut self.scratch);
                self.deliveries
                    .insert(key.as_slice(), self.scratch.as_slice())?;
                Ok(Applied::default())
            }
            Op::DeliveryDone {
                job_id,
                url,
                callback_state,
            } => {
                self.deliveries
                    .remove(delivery_key(&job_id, &url).as_slice())?;
                if let Some(state) = callback_state {
                    self.set_callback_state(&job_id, state)?;
                }
                Ok(Applied::default())
            }
            Op::SendHistory { limiter, sends_ns } => {
                if sends_ns.is_empty() {
                    self.sends.remove(limiter.as_bytes())?;
                } else {
                    self.scratch.clear();
                    SendsRow { sends_ns }.encode(&mut self.scratch);
                    self.sends
                        .insert(limiter.as_bytes(), self.scratch.as_slice())?;
                }
                Ok(Applied::default())
            }
            Op::Heartbeat { at_ms } => {
                self.meta
                    .insert(META_HEARTBEAT, encode_u64(at_ms).as_slice())?;
                Ok(Applied::default())
            }
            Op::Sweep { finished_before_ms } => self.sweep(finished_before_ms),
            Op::MarkCleanShutdown => {
                self.set_clean(true)?;
                Ok(Applied::default())
            }
        }
    }

    /// Sets or clears the clean-shutdown marker.
    pub(super) fn set_clean(&mut self, clean: bool) -> Result<(), StorageError> {
        if clean {
            self.meta.insert(META_CLEAN, [].as_slice())?;
        } else {
            self.meta.remove(META_CLEAN)?;
        }
        Ok(())
    }

    /// The stored row of job `id`; missing or unreadable skips the op.
    fn job(&self, id: &[u8; ID_LEN]) -> Result<JobRow, ApplyError> {
        let guard = self
            .jobs
            .get(id.as_slice())?
            .ok_or_else(|| ApplyError::Skipped(format!("job {} is not in the store", hex(id))))?;
        JobRow::decode(guard.value())
            .map_err(|e| ApplyError::Skipped(format!("job {} has an unreadable row: {e}", hex(id))))
    }

    /// Writes `row`, keeping the finished index in step. `old` is the row it replaces when the
    /// caller has already read it; otherwise the stored one is read.
    fn put_job(&mut self, row: &JobRow, old: Option<&JobRow>) -> Result<(), ApplyError> {
        let old_finished = match old {
            Some(old) => old.finished_at_ms,
            None => match self.jobs.get(row.id.as_slice())? {
                // A row being replaced that cannot be read leaves at worst a stale index entry,
                // which the sweep recognises and drops.
                Some(guard) => JobRow::decode(guard.value())
                    .ok()
                    .and_then(|old| old.finished_at_ms),
                None => None,
            },
        };
        let new_finished = row.finished_at_ms.filter(|_| row.status.is_finished());
        if old_finished != new_finished {
            if let Some(at) = old_finished {
                self.finished.remove(finished_key(at, &row.id).as_slice())?;
            }
            if let Some(at) = new_finished {
                self.finished
                    .insert(finished_key(at, &row.id).as_slice(), [].as_slice())?;
            }
        }
        self.scratch.clear();
        row.encode(&mut self.scratch);
        self.jobs
            .insert(row.id.as_slice(), self.scratch.as_slice())?;
        Ok(())
    }

    fn set_callback_state(
        &mut self,
        id: &[u8; ID_LEN],
        state: CallbackState,
    ) -> Result<(), ApplyError> {
        let mut row = self.job(id)?;
        if row.callback_state != state {
            row.callback_state = state;
            self.scratch.clear();
            row.encode(&mut self.scratch);
            self.jobs.insert(id.as_slice(), self.scratch.as_slice())?;
        }
        Ok(())
    }

    /// Whether any delivery of job `id` is still stored.
    fn has_delivery(&self, id: &[u8; ID_LEN]) -> Result<bool, StorageError> {
        let mut range = self.deliveries.range(id.as_slice()..)?;
        match range.next() {
            Some(entry) => Ok(entry?.0.value().starts_with(id)),
            None => Ok(false),
        }
    }

    /// Deletes finished jobs whose `finished_at_ms` is before `before_ms`. A job with a delivery
    /// still stored is kept (its callback is not settled, and `/_sluice/jobs/<id>` should still
    /// answer for it) and looked at again by the next sweep.
    fn sweep(&mut self, before_ms: u64) -> Result<Applied, ApplyError> {
        let cutoff = finished_key(before_ms, &[0; ID_LEN]);
        let mut expired: Vec<[u8; 8 + ID_LEN]> = Vec::new();
        for entry in self.finished.range(..cutoff.as_slice())? {
            if expired.len() == MAX_SWEEP_VISITS {
                break;
            }
            let (key, _) = entry?;
            // A key of another length was not written by this module: leave it for the start-up
            // check to report rather than guess what it means.
            if let Ok(key) = <[u8; 8 + ID_LEN]>::try_from(key.value()) {
                expired.push(key);
            }
        }
        let mut swept = 0;
        for key in expired {
            let (at, id) = split_finished_key(&key);
            if self.has_delivery(&id)? {
                continue;
            }
            let stored = match self.jobs.get(id.as_slice())? {
                None => None,
                Some(guard) => match JobRow::decode(guard.value()) {
                    Ok(row) => Some(row),
                    Err(e) => {
                        crate::log::event(
                            crate::log::Target::Store,
                            crate::log::Level::Error,
                            format_args!(
                                "store sweep: job {} has an unreadable row, kept: {e}",
                                hex(&id)
                            ),
                        );
                        continue;
                    }
                },
            };
            // Remove the job only if the index entry still describes it (a job put again since
            // it finished has its own entry).
            if let Some(row) = stored {
                if row.status.is_finished() && row.finished_at_ms == Some(at) {
                    self.jobs.remove(id.as_slice())?;
                    swept += 1;
                }
            }
            self.finished.remove(key.as_slice())?;
        }
        Ok(Applied { swept })
    }
}

/// Key of the finished index: the time first (big-endian, so keys sort by time), then the id.
fn finished_key(at_ms: u64, id: &[u8; ID_LEN]) -> [u8; 8 + ID_LEN] {
    let mut key = [0; 8 + ID_LEN];
    key[..8].copy_from_slice(&at_ms.to_be_bytes());
    key[8..].copy_from_slice(id);
    key
}

fn split_finished_key(key: &[u8; 8 + ID_LEN]) -> (u64, [u8; ID_LEN]) {
    let mut at = [0; 8];
    at.copy_from_slice(&key[..8]);
    let mut id = [0; ID_LEN];
    id.copy_from_slice(&key[8..]);
    (u64::from_be_bytes(at), id)
}

fn delivery_key(job_id: &[u8; ID_LEN], url: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(ID_LEN + url.len());
    key.extend_from_slice(job_id);
    key.extend_from_slice(url.as_bytes());
    key
}

/// Lowercase hex of a key, for messages.
pub(super) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A key for messages: as text when it is printable UTF-8, else as hex.
fn show_key(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => format!("0x{}", hex(bytes)),
    }
}

/// Reads everything back in the start-up transaction (opened by `Store::open`), checks the
/// layout version, records it on a new file, and clears the clean-shutdown marker so that a
/// crash from here on is seen as one at the next start. Every row is decoded; the first that
/// cannot be is an error naming the file, the table and the key.
pub(super) fn recover(tables: &mut Tables<'_>, path: &Path) -> Result<Recovered, String> {
    let file = path.display();
    let bad = |table: &str, key: &[u8], why: String| {
        format!(
            "store {file}: table `{table}`, key {}: {why}",
            show_key(key)
        )
    };
    let storage = |e: StorageError| format!("store {file}: cannot be read: {e}");

    let format = tables
        .meta
        .get(META_FORMAT)
        .map_err(storage)?
        .map(|guard| decode_u64(guard.value()));
    match format {
        Some(version) => {
            let version = version.map_err(|e| {
                bad(
                    "meta",
                    META_FORMAT.as_bytes(),
                    format!("unreadable format version: {e}"),
                )
            })?;
            if version != FORMAT_VERSION {
                return Err(format!(
                    "store {file}: layout version {version}, this sluice reads version \
                     {FORMAT_VERSION}"
                ));
            }
        }
        None => {
            tables
                .meta
                .insert(META_FORMAT, encode_u64(FORMAT_VERSION).as_slice())
                .map_err(storage)?;
        }
    }

    let mut recovered = Recovered::default();
    for entry in tables.jobs.iter().map_err(storage)? {
        let (key, value) = entry.map_err(storage)?;
        let key = key.value();
        let row = JobRow::decode(value.value()).map_err(|e| bad("jobs", key, e.to_string()))?;
        if key != row.id.as_slice() {
            return Err(bad(
                "jobs",
                key,
                format!("holds the row of job {}", hex(&row.id)),
            ));
        }
        recovered.jobs.push(row);
    }
    for entry in tables.deliveries.iter().map_err(storage)? {
        let (key, value) = entry.map_err(storage)?;
        let key = key.value();
        let row = DeliveryRow::decode(value.value())
            .map_err(|e| bad("deliveries", key, e.to_string()))?;
        if key != delivery_key(&row.job_id, &row.url).as_slice() {
            return Err(bad(
                "deliveries",
                key,
                format!(
                    "holds the delivery of job {} to {:?}",
                    hex(&row.job_id),
                    row.url
                ),
            ));
        }
        recovered.deliveries.push(row);
    }
    for entry in tables.sends.iter().map_err(storage)? {
        let (key, value) = entry.map_err(storage)?;
        let key = key.value();
        let name = std::str::from_utf8(key)
            .map_err(|_| bad("sends", key, "limiter name is not UTF-8".into()))?;
        let row = SendsRow::decode(value.value()).map_err(|e| bad("sends", key, e.to_string()))?;
        recovered.sends.push((name.to_owned(), row.sends_ns));
    }
    if let Some(guard) = tables.meta.get(META_HEARTBEAT).map_err(storage)? {
        let at = decode_u64(guard.value())
            .map_err(|e| bad("meta", META_HEARTBEAT.as_bytes(), e.to_string()))?;
        recovered.last_heartbeat_ms = Some(at);
    }
    if let Some(guard) = tables.meta.get(META_CLEAN).map_err(storage)? {
        if !guard.value().is_empty() {
            return Err(bad(
                "meta",
                META_CLEAN.as_bytes(),
                "the clean-shutdown marker holds data".into(),
            ));
        }
        recovered.clean_shutdown = true;
    }
    tables.set_clean(false).map_err(storage)?;
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_keys_sort_by_time_and_split_back() {
        let a = finished_key(255, &[0xff; 16]);
        let b = finished_key(256, &[0; 16]);
        assert!(a < b);
        assert_eq!(split_finished_key(&b), (256, [0; 16]));
        assert_eq!(split_finished_key(&a), (255, [0xff; 16]));
    }

    #[test]
    fn keys_are_shown_as_text_or_hex() {
        assert_eq!(show_key(b"upstream"), "\"upstream\"");
        assert_eq!(show_key(&[0, 1, 0xab]), "0x0001ab");
        assert_eq!(show_key(b"a\nb"), "0x610a62");
    }
}
