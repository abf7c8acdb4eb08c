//! Prompts for the media task: a WAV file or a text spoken by espeak-ng, turned once into 8 kHz 16-bit
//! mono PCM and cached, on disk by a hash of voice and text and in memory, so a call never waits for
//! speech synthesis twice. When synthesis is unavailable a short tone stands in (and is logged).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

/// 8 kHz mono PCM, ready to be cut into 20 ms frames.
pub type Audio = Arc<[i16]>;

/// The sample rate of everything the media task plays.
pub const RATE: u32 = 8000;

/// What to play: a text in a voice (`ru`, `en`) or a WAV file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PromptSource {
    Text { voice: String, text: String },
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("prompt {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("prompt {path}: {source}")]
    Wav { path: String, source: hound::Error },
    #[error("text to speech `{command}`: {reason}")]
    Tts { command: String, reason: String },
}

/// The prompt cache, shared by all media tasks.
#[derive(Debug)]
pub struct Prompts {
    dir: PathBuf,
    tts: String,
    memory: Mutex<HashMap<PromptSource, Audio>>,
}

impl Prompts {
    pub fn new(dir: PathBuf, tts: String) -> Self {
        Self {
            dir,
            tts,
            memory: Mutex::new(HashMap::new()),
        }
    }

    /// The audio of a prompt; a tone if it cannot be made (the call goes on, the failure is logged).
    pub async fn get(&self, source: &PromptSource) -> Audio {
        if let Some(a) = self.memory.lock().await.get(source) {
            return a.clone();
        }
        let audio = match self.render(source).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "prompt unavailable: a tone is played instead");
                tone(400, 440.0)
            }
        };
        self.memory
            .lock()
            .await
            .insert(source.clone(), audio.clone());
        audio
    }

    async fn render(&self, source: &PromptSource) -> Result<Audio, PromptError> {
        match source {
            PromptSource::File(path) => {
                let path = path.clone();
                blocking(move || read_wav(&path)).await
            }
            PromptSource::Text { voice, text } => {
                let cached = self.dir.join(format!("{}.wav", cache_key(voice, text)));
                if let Ok(audio) = {
                    let c = cached.clone();
                    blocking(move || read_wav(&c)).await
                } {
                    return Ok(audio);
                }
                tokio::fs::create_dir_all(&self.dir)
                    .await
                    .map_err(|source| PromptError::Io {
                        path: self.dir.display().to_string(),
                        source,
                    })?;
                let raw = cached.with_extension(format!("{}.tmp", std::process::id()));
                let out = tokio::process::Command::new(&self.tts)
                    .arg("-v")
                    .arg(voice)
                    .arg("-w")
                    .arg(&raw)
                    .arg("--")
                    .arg(text)
                    .kill_on_drop(true)
                    .output()
                    .await
                    .map_err(|e| PromptError::Tts {
                        command: self.tts.clone(),
                        reason: e.to_string(),
                    })?;
                if !out.status.success() {
                    let _ = tokio::fs::remove_file(&raw).await;
                    return Err(PromptError::Tts {
                        command: self.tts.clone(),
                        reason: format!(
                            "{}: {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    });
                }
                let (raw2, cached2) = (raw.clone(), cached.clone());
                let audio = blocking(move || {
                    let audio = read_wav(&raw2)?;
                    write_wav(&cached2, &audio)?;
                    Ok(audio)
                })
                .await;
                let _ = tokio::fs::remove_file(&raw).await;
                audio
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PromptError> + Send + 'static,
) -> Result<T, PromptError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PromptError::Io {
            path: "(worker)".into(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Hex SHA-256 of voice and text: the file name of a rendered prompt.
pub fn cache_key(voice: &str, text: &str) -> String {
    let mut h = Sha256::new();
    h.update(voice.as_bytes());
    h.update([0]);
    h.update(text.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a WAV of any rate and channel count (16-bit or float) as 8 kHz mono.
pub fn read_wav(path: &Path) -> Result<Audio, PromptError> {
    let err = |source| PromptError::Wav {
        path: path.display().to_string(),
        source,
    };
    let mut reader = hound::WavReader::open(path).map_err(err)?;
    let spec = reader.spec();
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.max(1) - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(err)?
        }
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(err)?,
    };
    let channels = usize::from(spec.channels.max(1));
    let mono: Vec<f32> = samples
        .chunks(channels)
        .map(|c| c.iter().sum::<f32>() / c.len() as f32)
        .collect();
    let out = resample(&mono, spec.sample_rate, RATE);
    Ok(out
        .iter()
        .map(|s| (s * 32767.0).clamp(-32768.0, 32767.0) as i16)
        .collect())
}

fn write_wav(path: &Path, audio: &[i16]) -> Result<(), PromptError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let err = |source| PromptError::Wav {
        path: path.display().to_string(),
        source,
    };
    // Written next to the final name and renamed, so a reader never sees half a file.
    let tmp = path.with_extension("part");
    let mut w = hound::WavWriter::create(&tmp, spec).map_err(err)?;
    for s in audio {
        w.write_sample(*s).map_err(err)?;
    }
    w.finalize().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|source| PromptError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Resamples with a windowed-sinc low-pass (cut below the target's Nyquist frequency) and linear
/// interpolation: good enough for speech on a telephone line.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() || from == 0 {
        return input.to_vec();
    }
    let filtered = if to < from {
        let cutoff = 0.45 * to as f32 / from as f32; // cycles per input sample
        let taps = 31i32;
        let half = taps / 2;
        let kernel: Vec<f32> = (-half..=half)
            .map(|n| {
                let x = n as f32;
                let sinc = if n == 0 {
                    2.0 * cutoff
                } else {
                    (2.0 * std::f32::consts::PI * cutoff * x).sin() / (std::f32::consts::PI * x)
                };
                let window = 0.54 + 0.46 * (std::f32::consts::PI * x / half as f32).cos();
                sinc * window
            })
            .collect();
        let sum: f32 = kernel.iter().sum();
        (0..input.len() as i32)
            .map(|i| {
                kernel
                    .iter()
                    .enumerate()
                    .map(|(k, w)| {
                        let j = (i + k as i32 - half).clamp(0, input.len() as i32 - 1);
                        w * input[j as usize]
                    })
                    .sum::<f32>()
                    / sum
            })
            .collect()
    } else {
        input.to_vec()
    };
    let out_len = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = from as f64 / to as f64;
    (0..out_len)
        .map(|i| {
            let pos = i as f64 * step;
            let j = pos as usize;
            let frac = (pos - j as f64) as f32;
            let a = filtered[j.min(filtered.len() - 1)];
            let b = filtered[(j + 1).min(filtered.len() - 1)];
            a + (b - a) * frac
        })
        .collect()
}

/// A sine tone of `ms` milliseconds at 8 kHz, quiet enough not to hurt.
pub fn tone(ms: u32, hz: f32) -> Audio {
    let n = (RATE * ms / 1000) as usize;
    (0..n)
        .map(|i| {
            let t = i as f32 / RATE as f32;
            ((2.0 * std::f32::consts::PI * hz * t).sin() * 8000.0) as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_keeps_duration_and_speech_band() {
        let rate = 22050;
        let sine = |hz: f32| -> Vec<f32> {
            (0..rate)
                .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5)
                .collect()
        };
        let speech = resample(&sine(1000.0), rate, RATE);
        assert_eq!(speech.len(), 8000);
        let peak = speech[100..7900].iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!(peak > 0.4, "1 kHz passes: {peak}");
        // 7 kHz would alias into the band: it must be strongly attenuated.
        let high = resample(&sine(7000.0), rate, RATE);
        let peak = high[100..7900].iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!(peak < 0.1, "7 kHz is filtered: {peak}");
    }

    #[test]
    fn cache_keys_differ_by_voice_and_text() {
        assert_ne!(cache_key("ru", "a"), cache_key("en", "a"));
        assert_ne!(cache_key("ru", "ab"), cache_key("ru", "a"));
        assert_eq!(cache_key("ru", "a").len(), 64);
    }

    #[tokio::test]
    async fn text_is_spoken_once_and_cached_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let src = PromptSource::Text {
            voice: "en".into(),
            text: "hello".into(),
        };
        let p = Prompts::new(dir.path().to_owned(), "espeak-ng".into());
        let audio = p.get(&src).await;
        let file = dir.path().join(format!("{}.wav", cache_key("en", "hello")));
        if which_espeak() {
            assert!(file.exists(), "rendered prompt cached on disk");
            assert!(
                audio.len() > 2000,
                "about a second of speech: {}",
                audio.len()
            );
            // A second cache (another process) reads the file instead of speaking again.
            let again = Prompts::new(dir.path().to_owned(), "/nonexistent/tts".into());
            assert_eq!(again.get(&src).await.len(), audio.len());
        }
        // Without a speech engine the call still gets something to hear.
        let none = Prompts::new(dir.path().join("x"), "/nonexistent/tts".into());
        assert_eq!(none.get(&src).await.len(), 3200);
    }

    fn which_espeak() -> bool {
        std::process::Command::new("espeak-ng")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }
}
