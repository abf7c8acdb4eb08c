//! Answering-machine detection for outbound calls, run by the media task on the callee's audio right
//! after the answer. A heuristic on speech energy per 20 ms frame, no speech recognition: a person
//! answers with a short word ("Алло?", "Hello?") and then waits, leaving a pause; a greeting recording
//! talks on ("Здравствуйте, вы позвонили ..., оставьте сообщение после сигнала"). Continuous speech
//! (gaps under `WORD_GAP`) longer than `MACHINE_SPEECH` is a machine; a pause of `HUMAN_PAUSE` after
//! some speech is a person; an answer that stays silent or undecided for `WINDOW` counts as a person.
//!
//! Limits, honestly: a person who answers with a long sentence ("Да, здравствуйте, слушаю вас
//! внимательно...") is taken for a machine; a recording that starts with a short word and a pause
//! ("Алло... [pause] ...это автоответчик") is taken for a person; background noise above the energy
//! threshold reads as speech; a voicemail that answers with a beep and no greeting reads as a person.
//! Carriers' own announcements before the answer are not seen (only audio after the 200 is looked at).

use std::time::Duration;

/// Samples per second of G.711 audio.
const RATE: u64 = 8000;
/// RMS (16-bit scale) above which a frame is speech: about -36 dBFS, above line noise and comfort noise.
pub const SPEECH_RMS: f64 = 500.0;
/// Silence shorter than this inside speech is a gap between words, not a pause.
pub const WORD_GAP: Duration = Duration::from_millis(300);
/// A pause this long after speech: someone is waiting for an answer.
pub const HUMAN_PAUSE: Duration = Duration::from_millis(700);
/// Continuous speech this long: a recorded greeting.
pub const MACHINE_SPEECH: Duration = Duration::from_millis(2500);
/// Undecided after this long (silence, or a person who keeps quiet): a person.
pub const WINDOW: Duration = Duration::from_millis(5000);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Human,
    Machine,
}

/// Feed it the callee's audio frame by frame; it answers once.
#[derive(Debug, Default)]
pub struct Detector {
    elapsed: Duration,
    /// Length of the current speech run (gaps below `WORD_GAP` included).
    run: Duration,
    /// Silence since the last speech frame.
    silence: Duration,
    heard_speech: bool,
    decided: bool,
}

impl Detector {
    /// One packet's 16-bit samples at 8 kHz (20 ms is 160 of them; 30 ms packets count as 30 ms).
    pub fn push(&mut self, samples: &[i16]) -> Option<Verdict> {
        if self.decided || samples.is_empty() {
            return None;
        }
        let frame = Duration::from_micros(samples.len() as u64 * 1_000_000 / RATE);
        self.elapsed += frame;
        let energy: f64 =
            samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / samples.len() as f64;
        let speech = energy.sqrt() > SPEECH_RMS;
        let verdict = if speech {
            if self.silence >= WORD_GAP {
                self.run = Duration::ZERO;
            } else {
                // The short gap belongs to the run.
                self.run += self.silence;
            }
            self.silence = Duration::ZERO;
            self.run += frame;
            self.heard_speech = true;
            (self.run >= MACHINE_SPEECH).then_some(Verdict::Machine)
        } else {
            self.silence += frame;
            (self.heard_speech && self.silence >= HUMAN_PAUSE).then_some(Verdict::Human)
        };
        let verdict = verdict.or((self.elapsed >= WINDOW).then_some(Verdict::Human));
        self.decided = verdict.is_some();
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut Detector, speech: bool, ms: u64) -> Option<Verdict> {
        let frame: Vec<i16> = (0..160)
            .map(|i| {
                if speech {
                    if i % 2 == 0 { 3000 } else { -3000 }
                } else {
                    (i % 7) as i16 * 20
                }
            })
            .collect();
        let mut out = None;
        for _ in 0..ms / 20 {
            if let Some(v) = d.push(&frame) {
                out = Some(v);
            }
        }
        out
    }

    #[test]
    fn hello_then_a_pause_is_a_person() {
        let mut d = Detector::default();
        assert_eq!(feed(&mut d, false, 400), None);
        assert_eq!(feed(&mut d, true, 600), None);
        assert_eq!(feed(&mut d, false, 1000), Some(Verdict::Human));
        assert_eq!(feed(&mut d, true, 5000), None, "answers once");
    }

    #[test]
    fn a_long_greeting_with_short_gaps_is_a_machine() {
        let mut d = Detector::default();
        let mut v = None;
        for _ in 0..10 {
            v = v.or(feed(&mut d, true, 400)).or(feed(&mut d, false, 200));
        }
        assert_eq!(v, Some(Verdict::Machine));
    }

    #[test]
    fn packets_of_30_ms_count_as_30_ms() {
        let mut d = Detector::default();
        let speech: Vec<i16> = (0..240)
            .map(|i| if i % 2 == 0 { 3000 } else { -3000 })
            .collect();
        // 84 packets of 30 ms: 2.52 s of speech (84 of 20 ms would be 1.68 s).
        let verdicts: Vec<_> = (0..84).filter_map(|_| d.push(&speech)).collect();
        assert_eq!(verdicts, vec![Verdict::Machine]);
    }

    #[test]
    fn silence_and_words_with_long_pauses_are_a_person() {
        let mut d = Detector::default();
        assert_eq!(feed(&mut d, false, 6000), Some(Verdict::Human));
        let mut d = Detector::default();
        // Three one-second words each followed by a 400 ms pause: never 2.5 s of run, pauses short.
        assert_eq!(feed(&mut d, true, 1000), None);
        assert_eq!(feed(&mut d, false, 400), None);
        assert_eq!(feed(&mut d, true, 1000), None);
        assert_eq!(feed(&mut d, false, 400), None);
        assert_eq!(feed(&mut d, true, 1000), None);
        assert_eq!(feed(&mut d, false, 2000), Some(Verdict::Human));
    }
}
