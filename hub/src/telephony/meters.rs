//! The meter-readings robot: an IVR node (`kind = "meter_readings"`) that takes a caller's account
//! number (offering the recognized caller's own first), then one reading per meter of the account by
//! DTMF (`*` the decimal point, `#` the end), reads it back, questions an implausible one and stores
//! it once confirmed. Pure like the rest of the walk: it answers digits, timeouts and the database's
//! answers (`MeterAnswer`, fetched by the core through `asks`) with what to say and what to ask.

use crate::storage::meters::MeterKind;

/// Digits of an account number at most.
const MAX_ACCOUNT_DIGITS: usize = 20;
/// Characters of a reading at most (digits and one `*`).
const MAX_READING_CHARS: usize = 12;
/// A reading is questioned above this many times the usual monthly consumption (per month passed).
const USUAL_FACTOR: f64 = 3.0;

/// What the robot asks the database (through the core).
#[derive(Debug, Clone, PartialEq)]
pub enum MeterAsk {
    /// The recognized caller's personal account, if any.
    CallerAccount,
    /// The meters of an account (the caller's tenant's, when the caller is recognized).
    Account(String),
    /// Store a confirmed reading with the call.
    Store {
        meter_id: i64,
        value: f64,
        questioned: bool,
    },
}

/// The database's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum MeterAnswer {
    CallerAccount(Option<String>),
    /// `None`: no consumer has the account.
    Meters(Option<Vec<MeterInfo>>),
    Stored,
    /// The database failed or did not answer in time.
    Failed,
}

/// What the robot needs to know of a meter.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterInfo {
    pub id: i64,
    pub kind: MeterKind,
    pub serial: String,
    pub last_value: Option<f64>,
    /// UTC milliseconds of the last reading.
    pub last_at: Option<i64>,
    pub monthly_increase: Option<f64>,
}

/// What the walk must do for the robot, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Say this text (in the caller's language).
    Say(String),
    /// After saying, wait for digits (they interrupt what is said).
    Listen,
    /// Ask the database; the answer comes to `answer`.
    Ask(MeterAsk),
    /// After saying, leave the robot (the node's `next`, else hang up).
    Leave,
}

/// Why a reading is questioned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Doubt {
    /// Below the meter's last reading.
    Lower { last: f64 },
    /// The increase is more than the cap or far above the usual consumption.
    TooHigh { last: f64 },
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Starting,
    Offer(String),
    Account(String),
    Checking,
    Reading(String),
    Confirm { value: f64, doubt: Option<Doubt> },
    Storing,
    Done,
}

/// One caller's walk through the robot.
#[derive(Debug, Clone)]
pub struct MeterRobot {
    en: bool,
    retries: u32,
    max_increase: Option<f64>,
    state: State,
    meters: Vec<MeterInfo>,
    index: usize,
    /// Wrong entries and timeouts at the current question.
    tries: u32,
    /// Accounts not found.
    misses: u32,
}

impl MeterRobot {
    /// Starts by asking for the recognized caller's account.
    pub fn start(language: &str, retries: u32, max_increase: Option<f64>) -> (Self, Vec<Out>) {
        let robot = MeterRobot {
            en: language == "en",
            retries,
            max_increase,
            state: State::Starting,
            meters: Vec::new(),
            index: 0,
            tries: 0,
            misses: 0,
        };
        (robot, vec![Out::Ask(MeterAsk::CallerAccount)])
    }

    fn t(&self, ru: &str, en: &str) -> Out {
        Out::Say(if self.en { en } else { ru }.to_owned())
    }

    /// Whether the robot waits for the database.
    pub fn asking(&self) -> bool {
        matches!(
            self.state,
            State::Starting | State::Checking | State::Storing
        )
    }

    /// The database answered.
    pub fn answer(&mut self, a: MeterAnswer) -> Vec<Out> {
        match (&self.state, a) {
            (_, MeterAnswer::Failed) => {
                self.state = State::Done;
                vec![
                    self.t(
                        "Извините, сейчас не удаётся принять показания. Попробуйте позже.",
                        "Sorry, readings cannot be taken right now. Please try again later.",
                    ),
                    Out::Leave,
                ]
            }
            (State::Starting, MeterAnswer::CallerAccount(Some(account))) => {
                self.state = State::Offer(account);
                self.offer()
            }
            (State::Starting, MeterAnswer::CallerAccount(None)) => self.ask_account(),
            (State::Checking, MeterAnswer::Meters(None)) => {
                self.misses += 1;
                let mut out = vec![self.t(
                    "Лицевой счёт не найден.",
                    "This account number is not found.",
                )];
                if self.misses > self.retries {
                    self.state = State::Done;
                    out.push(Out::Leave);
                } else {
                    out.extend(self.ask_account());
                }
                out
            }
            (State::Checking, MeterAnswer::Meters(Some(meters))) if meters.is_empty() => {
                self.state = State::Done;
                vec![
                    self.t(
                        "По этому лицевому счёту нет счётчиков.",
                        "There are no meters on this account.",
                    ),
                    Out::Leave,
                ]
            }
            (State::Checking, MeterAnswer::Meters(Some(meters))) => {
                self.meters = meters;
                self.index = 0;
                self.ask_reading(true)
            }
            (State::Storing, MeterAnswer::Stored) => {
                let mut out = vec![self.t("Показание сохранено.", "The reading is saved.")];
                self.index += 1;
                if self.index < self.meters.len() {
                    out.extend(self.ask_reading(true));
                } else {
                    self.state = State::Done;
                    out.push(self.t(
                        "Спасибо, ваши показания приняты.",
                        "Thank you, your readings are accepted.",
                    ));
                    out.push(Out::Leave);
                }
                out
            }
            // An answer to a question no longer asked.
            _ => Vec::new(),
        }
    }

    fn offer(&self) -> Vec<Out> {
        let State::Offer(account) = &self.state else {
            return Vec::new();
        };
        let spoken = digits(account);
        vec![
            if self.en {
                Out::Say(format!(
                    "Your account number is {spoken}. To give readings for it, press 1. For another account, press 2."
                ))
            } else {
                Out::Say(format!(
                    "Ваш лицевой счёт {spoken}. Чтобы передать показания по нему, нажмите 1. Для другого счёта нажмите 2."
                ))
            },
            Out::Listen,
        ]
    }

    fn ask_account(&mut self) -> Vec<Out> {
        self.state = State::Account(String::new());
        self.tries = 0;
        vec![
            self.t(
                "Введите номер лицевого счёта и нажмите решётку.",
                "Enter your account number, then press pound.",
            ),
            Out::Listen,
        ]
    }

    fn ask_reading(&mut self, fresh: bool) -> Vec<Out> {
        self.state = State::Reading(String::new());
        if fresh {
            self.tries = 0;
        }
        let Some(m) = self.meters.get(self.index) else {
            return vec![Out::Leave];
        };
        let (n, total) = (self.index + 1, self.meters.len());
        let tail: String = m
            .serial
            .chars()
            .rev()
            .filter(char::is_ascii_alphanumeric)
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let tail = digits(&tail);
        let last = m.last_value.map(|v| number(v, self.en));
        let text = if self.en {
            let kind = match m.kind {
                MeterKind::ColdWater => "cold water",
                MeterKind::HotWater => "hot water",
                MeterKind::Heat => "heat",
                MeterKind::Power => "electricity",
            };
            let last = last
                .map(|l| format!(" The previous reading is {l}."))
                .unwrap_or_default();
            format!(
                "Meter {n} of {total}, {kind}, number ending in {tail}.{last} Enter the reading, star for the decimal point, then press pound."
            )
        } else {
            let kind = match m.kind {
                MeterKind::ColdWater => "холодная вода",
                MeterKind::HotWater => "горячая вода",
                MeterKind::Heat => "отопление",
                MeterKind::Power => "электроэнергия",
            };
            let last = last
                .map(|l| format!(" Предыдущее показание {l}."))
                .unwrap_or_default();
            format!(
                "Счётчик {n} из {total}, {kind}, номер оканчивается на {tail}.{last} Введите показание, звёздочка — десятичная запятая, в конце нажмите решётку."
            )
        };
        vec![Out::Say(text), Out::Listen]
    }

    fn confirm(&self) -> Vec<Out> {
        let State::Confirm { value, doubt } = &self.state else {
            return Vec::new();
        };
        let v = number(*value, self.en);
        let text = match (doubt, self.en) {
            (None, true) => {
                format!("You entered {v}. To confirm, press 1. To enter it again, press 2.")
            }
            (None, false) => format!(
                "Вы ввели {v}. Для подтверждения нажмите 1. Чтобы ввести заново, нажмите 2."
            ),
            (Some(Doubt::Lower { last }), true) => format!(
                "You entered {v}. The reading is lower than the previous one, {}. To keep it anyway, press 1. To enter it again, press 2.",
                number(*last, true)
            ),
            (Some(Doubt::Lower { last }), false) => format!(
                "Вы ввели {v}. Это меньше предыдущего показания, {}. Чтобы всё равно сохранить, нажмите 1. Чтобы ввести заново, нажмите 2.",
                number(*last, false)
            ),
            (Some(Doubt::TooHigh { last }), true) => format!(
                "You entered {v}. That is far above the usual consumption since the previous reading, {}. To keep it anyway, press 1. To enter it again, press 2.",
                number(*last, true)
            ),
            (Some(Doubt::TooHigh { last }), false) => format!(
                "Вы ввели {v}. Это намного больше обычного расхода после предыдущего показания, {}. Чтобы всё равно сохранить, нажмите 1. Чтобы ввести заново, нажмите 2.",
                number(*last, false)
            ),
        };
        vec![Out::Say(text), Out::Listen]
    }

    /// A digit from the caller. Empty: keep listening.
    pub fn digit(&mut self, d: char, now_ms: i64) -> Vec<Out> {
        match &mut self.state {
            State::Offer(account) => match d {
                '1' => {
                    let ask = MeterAsk::Account(account.clone());
                    self.state = State::Checking;
                    vec![Out::Ask(ask)]
                }
                '2' => self.ask_account(),
                _ => self.wrong(),
            },
            State::Account(entered) => match d {
                '#' if entered.is_empty() => self.wrong(),
                '#' => {
                    let ask = MeterAsk::Account(std::mem::take(entered));
                    self.state = State::Checking;
                    vec![Out::Ask(ask)]
                }
                '0'..='9' if entered.len() < MAX_ACCOUNT_DIGITS => {
                    entered.push(d);
                    Vec::new()
                }
                _ => Vec::new(),
            },
            State::Reading(entered) => match d {
                '#' => match parse_reading(entered) {
                    Some(value) => {
                        let doubt = self
                            .meters
                            .get(self.index)
                            .and_then(|m| doubt(m, value, self.max_increase, now_ms));
                        if let Some(d) = doubt {
                            tracing::info!(value, ?d, "meter reading questioned");
                        }
                        self.state = State::Confirm { value, doubt };
                        self.confirm()
                    }
                    None => {
                        let mut out =
                            vec![self.t("Неверное показание.", "That is not a valid reading.")];
                        out.extend(self.retry_reading());
                        out
                    }
                },
                '0'..='9' | '*' if entered.len() < MAX_READING_CHARS => {
                    entered.push(d);
                    Vec::new()
                }
                _ => Vec::new(),
            },
            State::Confirm { value, doubt } => match d {
                '1' => {
                    let Some(m) = self.meters.get(self.index) else {
                        return vec![Out::Leave];
                    };
                    let ask = MeterAsk::Store {
                        meter_id: m.id,
                        value: *value,
                        questioned: doubt.is_some(),
                    };
                    self.state = State::Storing;
                    vec![Out::Ask(ask)]
                }
                '2' => self.ask_reading(false),
                _ => self.wrong(),
            },
            State::Starting | State::Checking | State::Storing | State::Done => Vec::new(),
        }
    }

    /// No digit in time: ask again, or give up after `retries`.
    pub fn timeout(&mut self, now_ms: i64) -> Vec<Out> {
        match &self.state {
            // An entry without `#`: take what was typed.
            State::Reading(entered) | State::Account(entered) if !entered.is_empty() => {
                self.digit('#', now_ms)
            }
            State::Offer(_) | State::Account(_) | State::Reading(_) | State::Confirm { .. } => {
                self.wrong()
            }
            _ => Vec::new(),
        }
    }

    /// A wrong key or silence: repeat the question, or give up.
    fn wrong(&mut self) -> Vec<Out> {
        self.tries += 1;
        if self.tries > self.retries {
            self.state = State::Done;
            return vec![
                self.t(
                    "Показания не приняты. До свидания.",
                    "No readings were taken. Goodbye.",
                ),
                Out::Leave,
            ];
        }
        match &self.state {
            State::Offer(_) => self.offer(),
            State::Account(_) => {
                let tries = self.tries;
                let out = self.ask_account();
                self.tries = tries;
                out
            }
            State::Confirm { .. } => self.confirm(),
            _ => self.ask_reading(false),
        }
    }

    fn retry_reading(&mut self) -> Vec<Out> {
        self.tries += 1;
        if self.tries > self.retries + 1 {
            self.state = State::Done;
            return vec![
                self.t(
                    "Показания не приняты. До свидания.",
                    "No readings were taken. Goodbye.",
                ),
                Out::Leave,
            ];
        }
        self.ask_reading(false)
    }
}

/// `1234*5` -> 1234.5; `None` for nothing, two points or a point with no digits after it.
pub fn parse_reading(entered: &str) -> Option<f64> {
    let (whole, frac) = match entered.split_once('*') {
        Some((w, f)) if !f.is_empty() && !f.contains('*') && f.len() <= 3 => (w, f),
        Some(_) => return None,
        None => (entered, ""),
    };
    if whole.is_empty() || whole.len() > 9 {
        return None;
    }
    format!("{whole}.{}", if frac.is_empty() { "0" } else { frac })
        .parse()
        .ok()
}

/// Whether a reading should be questioned: below the last one, above the configured cap of an
/// increase, or more than three times the usual consumption for the months passed (one at least).
pub fn doubt(m: &MeterInfo, value: f64, cap: Option<f64>, now_ms: i64) -> Option<Doubt> {
    let last = m.last_value?;
    if value < last {
        return Some(Doubt::Lower { last });
    }
    let increase = value - last;
    if cap.is_some_and(|c| increase > c) {
        return Some(Doubt::TooHigh { last });
    }
    let usual = m.monthly_increase.filter(|u| *u > 0.0)?;
    let months = m
        .last_at
        .map(|at| (now_ms - at) as f64 / (30.0 * 86_400_000.0))
        .unwrap_or(1.0)
        .max(1.0);
    (increase > USUAL_FACTOR * usual * months).then_some(Doubt::TooHigh { last })
}

/// Digits spoken one by one: `5102` -> `5 1 0 2`.
pub fn digits(s: &str) -> String {
    s.chars().map(String::from).collect::<Vec<_>>().join(" ")
}

/// A reading as espeak says it: `123.4` -> `123 point 4` / `123 запятая 4`; whole numbers plainly.
pub fn number(v: f64, en: bool) -> String {
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    match text.split_once('.') {
        Some((w, f)) => format!("{w} {} {}", if en { "point" } else { "запятая" }, digits(f)),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn meter(id: i64, last: Option<f64>) -> MeterInfo {
        MeterInfo {
            id,
            kind: MeterKind::ColdWater,
            serial: "CW-5102".into(),
            last_value: last,
            last_at: Some(0),
            monthly_increase: Some(5.0),
        }
    }

    fn said(out: &[Out]) -> String {
        out.iter()
            .filter_map(|o| match o {
                Out::Say(t) => Some(t.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn keys(r: &mut MeterRobot, s: &str, now: i64) -> Vec<Out> {
        let mut last = Vec::new();
        for d in s.chars() {
            last = r.digit(d, now);
        }
        last
    }

    #[test]
    fn readings_parse_with_star_as_the_point() {
        assert_eq!(parse_reading("1234*5"), Some(1234.5));
        assert_eq!(parse_reading("0012"), Some(12.0));
        assert_eq!(parse_reading(""), None);
        assert_eq!(parse_reading("*5"), None);
        assert_eq!(parse_reading("1*2*3"), None);
        assert_eq!(parse_reading("12*"), None);
        assert_eq!(number(123.4, true), "123 point 4");
        assert_eq!(number(123.0, false), "123");
        assert_eq!(number(7.25, false), "7 запятая 2 5");
        assert_eq!(digits("5102"), "5 1 0 2");
    }

    #[test]
    fn implausible_readings_are_doubted() {
        let m = meter(1, Some(100.0));
        assert_eq!(
            doubt(&m, 99.0, None, DAY),
            Some(Doubt::Lower { last: 100.0 })
        );
        assert_eq!(doubt(&m, 110.0, None, 30 * DAY), None);
        assert_eq!(
            doubt(&m, 116.0, None, 30 * DAY),
            Some(Doubt::TooHigh { last: 100.0 }),
            "more than 3 x 5 in a month"
        );
        assert_eq!(
            doubt(&m, 116.0, None, 90 * DAY),
            None,
            "three months passed"
        );
        assert_eq!(
            doubt(&m, 104.0, Some(3.0), DAY),
            Some(Doubt::TooHigh { last: 100.0 })
        );
        assert_eq!(doubt(&meter(1, None), 5.0, None, DAY), None);
    }

    #[test]
    fn a_known_caller_confirms_a_reading_which_is_stored_once_confirmed() {
        let (mut r, out) = MeterRobot::start("en", 2, None);
        assert_eq!(out, vec![Out::Ask(MeterAsk::CallerAccount)]);
        let out = r.answer(MeterAnswer::CallerAccount(Some("5102".into())));
        assert!(said(&out).contains("5 1 0 2"), "{out:?}");
        assert_eq!(out.last(), Some(&Out::Listen));
        assert_eq!(
            r.digit('1', 0),
            vec![Out::Ask(MeterAsk::Account("5102".into()))]
        );
        let out = r.answer(MeterAnswer::Meters(Some(vec![
            meter(7, Some(100.0)),
            meter(8, None),
        ])));
        assert!(said(&out).contains("Meter 1 of 2"), "{out:?}");
        assert!(said(&out).contains("previous reading is 100"), "{out:?}");
        assert!(keys(&mut r, "103*4", DAY).is_empty(), "still listening");
        let out = r.digit('#', DAY);
        assert!(said(&out).contains("You entered 103 point 4."), "{out:?}");
        // Re-enter, then confirm.
        let out = r.digit('2', DAY);
        assert!(said(&out).contains("Meter 1 of 2"), "{out:?}");
        let out = keys(&mut r, "104#", DAY);
        assert!(said(&out).contains("You entered 104."), "{out:?}");
        assert_eq!(
            r.digit('1', DAY),
            vec![Out::Ask(MeterAsk::Store {
                meter_id: 7,
                value: 104.0,
                questioned: false
            })]
        );
        assert!(r.asking());
        let out = r.answer(MeterAnswer::Stored);
        assert!(said(&out).contains("saved"), "{out:?}");
        assert!(said(&out).contains("Meter 2 of 2"), "{out:?}");
        keys(&mut r, "5#", DAY);
        let out = r.digit('1', DAY);
        assert!(matches!(
            out[0],
            Out::Ask(MeterAsk::Store { meter_id: 8, .. })
        ));
        let out = r.answer(MeterAnswer::Stored);
        assert!(said(&out).contains("Thank you"), "{out:?}");
        assert_eq!(out.last(), Some(&Out::Leave));
    }

    #[test]
    fn a_lower_reading_is_questioned_before_it_is_stored() {
        let (mut r, _) = MeterRobot::start("ru", 2, None);
        let out = r.answer(MeterAnswer::CallerAccount(None));
        assert!(
            said(&out).contains("Введите номер лицевого счёта"),
            "{out:?}"
        );
        let out = keys(&mut r, "9999#", 0);
        assert_eq!(out, vec![Out::Ask(MeterAsk::Account("9999".into()))]);
        let out = r.answer(MeterAnswer::Meters(None));
        assert!(said(&out).contains("не найден"), "{out:?}");
        keys(&mut r, "5102#", 0);
        r.answer(MeterAnswer::Meters(Some(vec![meter(7, Some(100.0))])));
        let out = keys(&mut r, "90#", DAY);
        assert!(
            said(&out).contains("меньше предыдущего показания, 100"),
            "{out:?}"
        );
        // Nothing is stored until the caller keeps it.
        assert!(!out.iter().any(|o| matches!(o, Out::Ask(_))));
        assert_eq!(
            r.digit('1', DAY),
            vec![Out::Ask(MeterAsk::Store {
                meter_id: 7,
                value: 90.0,
                questioned: true
            })]
        );
    }

    #[test]
    fn silence_repeats_then_gives_up() {
        let (mut r, _) = MeterRobot::start("en", 1, None);
        r.answer(MeterAnswer::CallerAccount(None));
        let out = r.timeout(0);
        assert!(said(&out).contains("Enter your account"), "{out:?}");
        let out = r.timeout(0);
        assert_eq!(out.last(), Some(&Out::Leave));
        let (mut r, _) = MeterRobot::start("en", 1, None);
        let out = r.answer(MeterAnswer::Failed);
        assert_eq!(out.last(), Some(&Out::Leave));
    }
}
