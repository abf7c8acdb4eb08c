//! Call recording (`[telephony] record = true`): the media task hands each 20 ms tick's audio, the
//! caller's (decoded RTP) and the hub's (the frame it sent), to a `CallRecording`, which batches it
//! as stereo samples (caller left, hub right, 8 kHz 16-bit) and passes the batches over a bounded
//! channel to a writer task, which writes each batch on the blocking pool (no thread is held between
//! batches). The media task never waits for the disk: a batch the
//! writer cannot take is dropped and counted. Once the WAV file is finished, its path is written on
//! the call record (`calls.recording`), served by `GET /api/v1/calls/{id}/recording`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::g711::FRAME_SAMPLES;
use crate::metrics::Metrics;
use crate::storage::Db;

/// Batches (one second each) waiting for the writer before newer ones are dropped.
pub const RECORD_CHANNEL: usize = 32;
/// Ticks per batch.
const BATCH_TICKS: usize = 50;
/// Caller audio kept ahead of the hub's frames (jitter) before the oldest is dropped: 3 frames.
const MAX_AHEAD: usize = 3 * FRAME_SAMPLES;

/// The recording side of one call's media task.
pub struct CallRecording {
    tx: mpsc::Sender<Vec<i16>>,
    caller: VecDeque<i16>,
    batch: Vec<i16>,
    metrics: Arc<Metrics>,
}

/// `DIR/YYYY-MM-DD/CALLID.wav`, the Call-ID kept to safe characters.
pub fn path_for(dir: &Path, sip_call_id: &str, at: chrono::DateTime<chrono::Utc>) -> PathBuf {
    let name: String = sip_call_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    dir.join(at.format("%Y-%m-%d").to_string())
        .join(format!("{}-{name}.wav", at.format("%H%M%S")))
}

impl CallRecording {
    /// Starts the writer of `path`; when it is done, the path goes on the call of `sip_call_id`.
    pub fn start(path: PathBuf, db: Db, sip_call_id: String, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(RECORD_CHANNEL);
        tokio::spawn(async move {
            match write(path.clone(), rx).await {
                Ok(seconds) => {
                    let stored = store(&db, &sip_call_id, &path).await;
                    match stored {
                        Ok(()) => {
                            tracing::info!(path = %path.display(), seconds, "call recorded")
                        }
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "recording not linked to its call")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "call recording failed")
                }
            }
        });
        CallRecording {
            tx,
            caller: VecDeque::with_capacity(MAX_AHEAD),
            batch: Vec::with_capacity(BATCH_TICKS * FRAME_SAMPLES * 2),
            metrics,
        }
    }

    /// Audio from the caller (decoded RTP payload).
    pub fn heard(&mut self, samples: impl IntoIterator<Item = i16>) {
        self.caller.extend(samples);
        while self.caller.len() > MAX_AHEAD {
            self.caller.pop_front();
        }
    }

    /// The frame the hub sent this tick: paired with the caller's audio of the same time.
    pub fn sent(&mut self, frame: impl IntoIterator<Item = i16>) {
        for hub in frame {
            let caller = self.caller.pop_front().unwrap_or(0);
            self.batch.push(caller);
            self.batch.push(hub);
        }
        if self.batch.len() >= BATCH_TICKS * FRAME_SAMPLES * 2 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(
            &mut self.batch,
            Vec::with_capacity(BATCH_TICKS * FRAME_SAMPLES * 2),
        );
        if self.tx.try_send(batch).is_err() {
            self.metrics
                .inc("hub_telephony_recording_dropped_total", &[]);
            tracing::warn!("call recording: the writer is behind, one second dropped");
        }
    }
}

impl Drop for CallRecording {
    /// The call is over: the rest goes to the writer, which then finishes the file.
    fn drop(&mut self) {
        self.flush();
    }
}

type Writer = hound::WavWriter<std::io::BufWriter<std::fs::File>>;

/// Writes batches until the channel closes; returns the seconds written. The file work runs on the
/// blocking pool one batch at a time, so a call holds no thread between batches.
async fn write(path: PathBuf, mut rx: mpsc::Receiver<Vec<i16>>) -> Result<f64, String> {
    let blocking = |r: Result<Result<Writer, hound::Error>, tokio::task::JoinError>| match r {
        Ok(Ok(w)) => Ok(w),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let mut w = blocking(
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let spec = hound::WavSpec {
                channels: 2,
                sample_rate: 8000,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            hound::WavWriter::create(path, spec)
        })
        .await,
    )?;
    while let Some(batch) = rx.recv().await {
        w = blocking(
            tokio::task::spawn_blocking(move || {
                for s in batch {
                    w.write_sample(s)?;
                }
                w.flush()?;
                Ok(w)
            })
            .await,
        )?;
    }
    let seconds = f64::from(w.duration()) / 8000.0;
    tokio::task::spawn_blocking(move || w.finalize())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(seconds)
}

async fn store(
    db: &Db,
    sip_call_id: &str,
    path: &Path,
) -> Result<(), crate::storage::StorageError> {
    let mut conn = db.conn().await?;
    sqlx::query(
        "UPDATE calls SET recording = $1 WHERE id = (SELECT MAX(id) FROM calls WHERE sip_call_id = $2)",
    )
    .bind(path.to_string_lossy().into_owned())
    .bind(sip_call_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The recording of call `id`, if it has one.
pub async fn of_call(
    conn: &mut sqlx::AnyConnection,
    id: i64,
) -> Result<Option<String>, crate::storage::StorageError> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT recording FROM calls WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.and_then(|r| r.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn caller_left_hub_right_and_the_file_is_linked_to_the_call() {
        let (db, dir) = crate::storage::test_db::fresh().await;
        let mut c = db.conn().await.unwrap();
        let id = crate::telephony::store::insert(&mut c, "rec@x", "+79160000001", "ivr", 1)
            .await
            .unwrap();
        let path = path_for(dir.path(), "rec@x/1", chrono::Utc::now());
        assert!(path.to_string_lossy().ends_with("-rec_x_1.wav"), "{path:?}");
        let mut rec = CallRecording::start(
            path.clone(),
            db.clone(),
            "rec@x".into(),
            Arc::new(Metrics::default()),
        );
        for tick in 0..120 {
            // The caller speaks in the first second only; the hub all along.
            if tick < 50 {
                rec.heard(std::iter::repeat_n(1000, FRAME_SAMPLES));
            }
            rec.sent(std::iter::repeat_n(-500, FRAME_SAMPLES));
        }
        drop(rec);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let stored = loop {
            if let Some(p) = of_call(&mut c, id).await.unwrap() {
                break p;
            }
            assert!(std::time::Instant::now() < deadline, "not linked");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(stored, path.to_string_lossy());
        let mut r = hound::WavReader::open(&path).unwrap();
        assert_eq!(r.spec().channels, 2);
        assert_eq!(r.spec().sample_rate, 8000);
        let samples: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(samples.len(), 120 * FRAME_SAMPLES * 2);
        assert_eq!((samples[0], samples[1]), (1000, -500));
        let last = samples.len() - 2;
        assert_eq!((samples[last], samples[last + 1]), (0, -500));
    }
}
