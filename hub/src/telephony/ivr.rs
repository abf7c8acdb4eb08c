//! The IVR: menus as data (`[telephony.ivr]`) and, per answered call, an `IvrRun` that the call core
//! drives with the caller's digits, the media task's "prompt finished" and its own digit timer. It only
//! decides (`Step`s); the core plays, hangs up and records.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::asks::{ASK_TIMEOUT, Answer, Ask};
use super::meters::{MeterRobot, Out};
use super::prompts::PromptSource;
use super::store::IvrMode;

/// `[telephony.ivr]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IvrConfig {
    /// Node where calls start in day mode (business hours).
    #[serde(default = "default_day")]
    pub day: String,
    /// Node where calls start in night mode (outside business hours).
    #[serde(default = "default_night")]
    pub night: String,
    /// Node where calls start in emergency mode (after the announcement).
    #[serde(default = "default_day")]
    pub emergency: String,
    /// Milliseconds a menu waits for a digit after its prompt ends.
    #[serde(default = "default_digit_timeout_ms")]
    pub digit_timeout_ms: u64,
    /// Times a menu is repeated after a timeout or a wrong digit before it gives up.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The menu nodes by name; empty means the built-in menu (see docs/telephony.md).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, Node>,
}

fn default_day() -> String {
    "main".into()
}
fn default_night() -> String {
    "night".into()
}
fn default_digit_timeout_ms() -> u64 {
    5000
}
fn default_retries() -> u32 {
    2
}

impl Default for IvrConfig {
    fn default() -> Self {
        Self {
            day: default_day(),
            night: default_night(),
            emergency: default_day(),
            digit_timeout_ms: default_digit_timeout_ms(),
            retries: default_retries(),
            nodes: BTreeMap::new(),
        }
    }
}

/// A prompt: text per language (spoken by espeak-ng) or a WAV file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    /// Russian text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ru: Option<String>,
    /// English text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub en: Option<String>,
    /// A WAV file (any rate; converted to 8 kHz mono), played instead of the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl Prompt {
    fn text(ru: &str, en: &str) -> Self {
        Prompt {
            ru: Some(ru.into()),
            en: Some(en.into()),
            file: None,
        }
    }

    /// What to play for a caller speaking `language`; the other language if this one is missing.
    pub fn source(&self, language: &str) -> Option<PromptSource> {
        if let Some(f) = &self.file {
            return Some(PromptSource::File(f.clone()));
        }
        let (first, second) = if language == "en" {
            ((&self.en, "en"), (&self.ru, "ru"))
        } else {
            ((&self.ru, "ru"), (&self.en, "en"))
        };
        [first, second].into_iter().find_map(|(t, voice)| {
            t.as_ref().map(|text| PromptSource::Text {
                voice: voice.to_owned(),
                text: text.clone(),
            })
        })
    }
}

/// One node of a menu.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Node {
    /// Plays a prompt, then goes on.
    Play { prompt: Prompt, next: String },
    /// Plays a prompt and waits for one digit; `options` maps digits to nodes. Digits interrupt the
    /// prompt. After `retries` timeouts or wrong digits it goes to `fail` (hangs up when unset).
    Menu {
        prompt: Prompt,
        options: BTreeMap<String, String>,
        #[serde(default)]
        invalid: Option<Prompt>,
        #[serde(default)]
        fail: Option<String>,
    },
    /// Collects up to `max_digits` digits (ended early by `#` or the digit timeout), then goes on.
    Collect {
        prompt: Prompt,
        max_digits: usize,
        next: String,
    },
    /// Hands the caller to a queue. Queues come later: for now the prompt plays and the call ends.
    Transfer { queue: String, prompt: Prompt },
    /// Plays an optional prompt and hangs up.
    Hangup {
        #[serde(default)]
        prompt: Option<Prompt>,
    },
    /// The meter-readings robot: account number, then a reading per meter of the account, each
    /// read back and confirmed (docs/telephony.md). Goes to `next` when done (hangs up when unset).
    MeterReadings {
        #[serde(default)]
        next: Option<String>,
        /// Largest increase over the last reading taken without question (the usual consumption
        /// is checked anyway).
        #[serde(default)]
        max_increase: Option<f64>,
    },
}

/// The menu of the seeds: 1-4 accounting, technical, connection, sales; 5 meter readings (the
/// robot); 0 the dispatcher.
pub fn builtin_nodes() -> BTreeMap<String, Node> {
    let mut n = BTreeMap::new();
    let options = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(d, node)| ((*d).to_owned(), (*node).to_owned()))
            .collect()
    };
    n.insert(
        "main".into(),
        Node::Menu {
            prompt: Prompt::text(
                "Здравствуйте! Бухгалтерия — нажмите 1. Техническая служба — 2. Подключение — 3. \
                 Отдел продаж — 4. Показания счётчиков — 5. Диспетчер — 0.",
                "Hello! For accounting press 1. Technical service, 2. Connection, 3. Sales, 4. \
                 Meter readings, 5. The dispatcher, 0.",
            ),
            options: options(&[
                ("1", "accounting"),
                ("2", "technical"),
                ("3", "connection"),
                ("4", "sales"),
                ("5", "meter_readings"),
                ("0", "dispatcher"),
            ]),
            invalid: Some(Prompt::text("Неверный выбор.", "Invalid choice.")),
            fail: Some("dispatcher".into()),
        },
    );
    n.insert(
        "night".into(),
        Node::Menu {
            prompt: Prompt::text(
                "Сейчас нерабочее время. Чтобы передать показания счётчиков, нажмите 5. Чтобы \
                 связаться с аварийным диспетчером, нажмите 0.",
                "We are closed now. For meter readings press 5. For the emergency dispatcher press 0.",
            ),
            options: options(&[("5", "meter_readings"), ("0", "dispatcher")]),
            invalid: None,
            fail: Some("goodbye".into()),
        },
    );
    for (node, ru, en) in [
        (
            "accounting",
            "Соединяю с бухгалтерией.",
            "Connecting you to accounting.",
        ),
        (
            "technical",
            "Соединяю с технической службой.",
            "Connecting you to the technical service.",
        ),
        (
            "connection",
            "Соединяю с отделом подключений.",
            "Connecting you to connections.",
        ),
        (
            "sales",
            "Соединяю с отделом продаж.",
            "Connecting you to sales.",
        ),
        (
            "dispatcher",
            "Соединяю с диспетчером.",
            "Connecting you to the dispatcher.",
        ),
    ] {
        n.insert(
            node.into(),
            Node::Transfer {
                queue: node.into(),
                prompt: Prompt::text(ru, en),
            },
        );
    }
    n.insert(
        "meter_readings".into(),
        Node::MeterReadings {
            next: None,
            max_increase: None,
        },
    );
    n.insert(
        "goodbye".into(),
        Node::Hangup {
            prompt: Some(Prompt::text("До свидания.", "Goodbye.")),
        },
    );
    n
}

impl IvrConfig {
    /// The configured nodes, or the built-in menu.
    pub fn nodes(&self) -> BTreeMap<String, Node> {
        if self.nodes.is_empty() {
            builtin_nodes()
        } else {
            self.nodes.clone()
        }
    }

    /// Every node a menu names exists, and so do the start nodes.
    pub fn check(&self) -> Result<(), String> {
        let nodes = self.nodes();
        let exists = |name: &str, from: &str| {
            if nodes.contains_key(name) {
                Ok(())
            } else {
                Err(format!("{from}: no node `{name}`"))
            }
        };
        exists(&self.day, "telephony.ivr.day")?;
        exists(&self.night, "telephony.ivr.night")?;
        exists(&self.emergency, "telephony.ivr.emergency")?;
        for (name, node) in &nodes {
            let from = format!("telephony.ivr.nodes.{name}");
            match node {
                Node::Play { next, .. } | Node::Collect { next, .. } => exists(next, &from)?,
                Node::Menu { options, fail, .. } => {
                    for (digit, target) in options {
                        if digit.len() != 1 || !"0123456789*#ABCD".contains(digit.as_str()) {
                            return Err(format!("{from}: `{digit}` is not a DTMF digit"));
                        }
                        exists(target, &from)?;
                    }
                    if let Some(f) = fail {
                        exists(f, &from)?;
                    }
                }
                Node::MeterReadings { next, max_increase } => {
                    if let Some(n) = next {
                        exists(n, &from)?;
                    }
                    if max_increase.is_some_and(|m| !m.is_finite() || m <= 0.0) {
                        return Err(format!("{from}: max_increase must be above 0"));
                    }
                }
                Node::Transfer { .. } | Node::Hangup { .. } => {}
            }
        }
        Ok(())
    }
}

/// What the core must do for the IVR.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Play these prompts (in order) as playback `id`; anything playing stops.
    Play { id: u64, prompts: Vec<PromptSource> },
    /// Stop playing (a digit interrupted a menu prompt).
    Stop,
    /// The caller chose a queue.
    Queue(String),
    /// Ask the database (aside); the answer comes back to `IvrRun::answer`.
    Ask(Ask),
    /// End the call.
    Hangup,
}

#[derive(Debug, Clone, PartialEq)]
enum Waiting {
    /// For playback `id` to finish, then enter `then` (or hang up).
    Playback {
        id: u64,
        then: After,
    },
    /// For digits of the current node until `deadline`.
    Digits,
    /// For the answer to an `Ask` until `deadline`.
    Answer,
    Done,
}

#[derive(Debug, Clone, PartialEq)]
enum After {
    Enter(String),
    Listen,
    Hangup,
}

/// One call's walk through the menu.
#[derive(Debug)]
pub struct IvrRun {
    nodes: BTreeMap<String, Node>,
    language: String,
    timeout: Duration,
    retries: u32,
    node: String,
    tries: u32,
    collected: String,
    waiting: Waiting,
    deadline: Option<Instant>,
    play_id: u64,
    /// The meter robot, while the walk is in a `meter_readings` node.
    robot: Option<MeterRobot>,
    /// The outage the caller may ask to be told the end of (9), until they have.
    notify_outage: Option<i64>,
    /// The time of the event being handled.
    now: Instant,
}

/// The key that asks for an SMS when the outage is over.
pub const NOTIFY_KEY: char = '9';

impl IvrRun {
    /// Starts at the node of `mode`, after `announcement` if there is one.
    pub fn start(
        config: &IvrConfig,
        nodes: BTreeMap<String, Node>,
        mode: IvrMode,
        announcement: Option<PromptSource>,
        language: &str,
    ) -> (Self, Vec<Step>) {
        let start = match mode {
            IvrMode::Day => &config.day,
            IvrMode::Night => &config.night,
            IvrMode::Emergency => &config.emergency,
        };
        let mut run = IvrRun {
            nodes,
            language: language.to_owned(),
            timeout: Duration::from_millis(config.digit_timeout_ms),
            retries: config.retries,
            node: start.clone(),
            tries: 0,
            collected: String::new(),
            waiting: Waiting::Done,
            deadline: None,
            play_id: 0,
            robot: None,
            notify_outage: None,
            now: Instant::now(),
        };
        let steps = match announcement {
            Some(a) => run.play(vec![a], After::Enter(start.clone())),
            None => run.enter(start.clone()),
        };
        (run, steps)
    }

    pub fn next_wakeup(&self) -> Option<Instant> {
        self.deadline
    }

    /// Offers the caller the SMS at the end of outage `outage` (key 9 in menus that do not use it);
    /// the announcement says so.
    pub fn offer_notify_when_over(&mut self, outage: Option<i64>) {
        self.notify_outage = outage;
    }

    /// Where the walk is: the node and what it waits for (for logs and tests).
    pub fn state(&self) -> String {
        let waiting = match &self.waiting {
            Waiting::Playback { .. } => "playback",
            Waiting::Digits => "digits",
            Waiting::Answer => "answer",
            Waiting::Done => "done",
        };
        format!("{}:{waiting}", self.node)
    }

    fn play(&mut self, prompts: Vec<PromptSource>, then: After) -> Vec<Step> {
        self.play_id += 1;
        self.waiting = Waiting::Playback {
            id: self.play_id,
            then,
        };
        self.deadline = None;
        vec![Step::Play {
            id: self.play_id,
            prompts,
        }]
    }

    fn prompt(&self, p: &Prompt) -> Vec<PromptSource> {
        p.source(&self.language).into_iter().collect()
    }

    fn enter(&mut self, name: String) -> Vec<Step> {
        let Some(node) = self.nodes.get(&name).cloned() else {
            tracing::warn!(node = %name, "ivr: no such node; hanging up");
            self.waiting = Waiting::Done;
            return vec![Step::Hangup];
        };
        self.node = name;
        self.tries = 0;
        self.collected.clear();
        self.robot = None;
        match node {
            Node::MeterReadings { max_increase, .. } => {
                let (robot, outs) = MeterRobot::start(&self.language, self.retries, max_increase);
                self.robot = Some(robot);
                self.robot_steps(outs)
            }
            Node::Play { prompt, next } => {
                let p = self.prompt(&prompt);
                self.play(p, After::Enter(next))
            }
            Node::Menu { prompt, .. } | Node::Collect { prompt, .. } => {
                let p = self.prompt(&prompt);
                self.play(p, After::Listen)
            }
            Node::Transfer { queue, prompt } => {
                let p = self.prompt(&prompt);
                let mut steps = vec![Step::Queue(queue)];
                steps.extend(self.play(p, After::Hangup));
                steps
            }
            Node::Hangup { prompt } => match prompt {
                Some(p) => {
                    let p = self.prompt(&p);
                    self.play(p, After::Hangup)
                }
                None => {
                    self.waiting = Waiting::Done;
                    vec![Step::Hangup]
                }
            },
        }
    }

    /// Turns what the robot said into steps: its texts become one playback, followed by listening,
    /// an `Ask` or leaving the node.
    fn robot_steps(&mut self, outs: Vec<Out>) -> Vec<Step> {
        let mut prompts = Vec::new();
        let mut steps = Vec::new();
        for out in outs {
            match out {
                Out::Say(text) => prompts.push(PromptSource::Text {
                    voice: self.language.clone(),
                    text,
                }),
                Out::Listen => {
                    steps.extend(self.play(std::mem::take(&mut prompts), After::Listen));
                }
                Out::Ask(ask) => {
                    if !prompts.is_empty() {
                        steps.extend(self.play(std::mem::take(&mut prompts), After::Listen));
                    }
                    steps.push(Step::Ask(Ask::Meters(ask)));
                    self.waiting = Waiting::Answer;
                    self.deadline = Some(self.now + ASK_TIMEOUT);
                }
                Out::Leave => {
                    let next = match self.nodes.get(&self.node) {
                        Some(Node::MeterReadings { next: Some(n), .. }) => After::Enter(n.clone()),
                        _ => After::Hangup,
                    };
                    self.robot = None;
                    steps.extend(self.play(std::mem::take(&mut prompts), next));
                }
            }
        }
        if steps.is_empty() {
            // Nothing to say: keep collecting digits.
            self.waiting = Waiting::Digits;
            self.deadline = Some(self.now + self.timeout);
        }
        steps
    }

    /// The answer to an `Ask`.
    pub fn answer(&mut self, answer: Answer, now: Instant) -> Vec<Step> {
        self.now = now;
        if self.waiting != Waiting::Answer {
            return Vec::new();
        }
        self.deadline = None;
        match answer {
            Answer::Meters(a) => match self.robot.as_mut() {
                Some(robot) => {
                    let outs = robot.answer(a);
                    self.robot_steps(outs)
                }
                None => Vec::new(),
            },
            Answer::NotifyWhenOver(ok) => {
                let text = match (ok, self.language == "en") {
                    (true, true) => "You will get an SMS when the supply is restored.",
                    (true, false) => "Мы пришлём вам SMS, когда подача будет восстановлена.",
                    (false, true) => "Sorry, the request could not be taken.",
                    (false, false) => "Извините, не удалось принять запрос.",
                };
                let prompt = PromptSource::Text {
                    voice: self.language.clone(),
                    text: text.to_owned(),
                };
                let node = self.node.clone();
                self.play(vec![prompt], After::Enter(node))
            }
        }
    }

    /// The media task finished playback `id`.
    pub fn played(&mut self, id: u64, now: Instant) -> Vec<Step> {
        self.now = now;
        let Waiting::Playback { id: current, then } = &self.waiting else {
            return Vec::new();
        };
        if *current != id {
            return Vec::new();
        }
        match then.clone() {
            After::Enter(next) => self.enter(next),
            After::Listen => {
                self.waiting = Waiting::Digits;
                self.deadline = Some(now + self.timeout);
                Vec::new()
            }
            After::Hangup => {
                self.waiting = Waiting::Done;
                vec![Step::Hangup]
            }
        }
    }

    /// A digit from the caller.
    pub fn digit(&mut self, d: char, now: Instant) -> Vec<Step> {
        self.now = now;
        let listening = match &self.waiting {
            Waiting::Digits => true,
            // Digits interrupt a menu's own prompt, not announcements or goodbyes.
            Waiting::Playback {
                then: After::Listen,
                ..
            } => true,
            _ => false,
        };
        if !listening {
            return Vec::new();
        }
        let interrupted = !matches!(self.waiting, Waiting::Digits);
        let mut steps = if interrupted {
            vec![Step::Stop]
        } else {
            Vec::new()
        };
        if let Some(robot) = self.robot.as_mut() {
            let outs = robot.digit(d, crate::storage::now_ms());
            steps.extend(self.robot_steps(outs));
            return steps;
        }
        match self.nodes.get(&self.node).cloned() {
            Some(Node::Menu { options, .. }) => match options.get(d.to_string().as_str()) {
                Some(next) => steps.extend(self.enter(next.clone())),
                None if d == NOTIFY_KEY && self.notify_outage.is_some() => {
                    let outage_id = self.notify_outage.take().unwrap_or_default();
                    steps.push(Step::Ask(Ask::NotifyWhenOver { outage_id }));
                    self.waiting = Waiting::Answer;
                    self.deadline = Some(now + ASK_TIMEOUT);
                }
                None => steps.extend(self.retry()),
            },
            Some(Node::Collect {
                max_digits, next, ..
            }) => {
                if d != '#' {
                    self.collected.push(d);
                }
                if d == '#' || self.collected.len() >= max_digits {
                    steps.extend(self.enter(next));
                } else {
                    self.waiting = Waiting::Digits;
                    self.deadline = Some(now + self.timeout);
                }
            }
            _ => {}
        }
        steps
    }

    /// Time passed: a menu's digit timeout.
    pub fn tick(&mut self, now: Instant) -> Vec<Step> {
        self.now = now;
        match self.deadline {
            Some(d) if now >= d => {
                self.deadline = None;
                if self.waiting == Waiting::Answer {
                    tracing::warn!(node = %self.node, "ivr: no answer from the database in time");
                    let answer = match self.robot {
                        Some(_) => Answer::Meters(super::meters::MeterAnswer::Failed),
                        None => Answer::NotifyWhenOver(false),
                    };
                    return self.answer(answer, now);
                }
                if let Some(robot) = self.robot.as_mut() {
                    let outs = robot.timeout(crate::storage::now_ms());
                    return self.robot_steps(outs);
                }
                match self.nodes.get(&self.node).cloned() {
                    Some(Node::Collect { next, .. }) => self.enter(next),
                    _ => self.retry(),
                }
            }
            _ => Vec::new(),
        }
    }

    /// A wrong digit or no digit: say so and repeat the menu, or give up.
    fn retry(&mut self) -> Vec<Step> {
        let Some(Node::Menu {
            prompt,
            invalid,
            fail,
            ..
        }) = self.nodes.get(&self.node).cloned()
        else {
            return vec![Step::Hangup];
        };
        self.tries += 1;
        if self.tries > self.retries {
            return match fail {
                Some(f) => self.enter(f),
                None => {
                    self.waiting = Waiting::Done;
                    vec![Step::Hangup]
                }
            };
        }
        let mut prompts = invalid.map(|p| self.prompt(&p)).unwrap_or_default();
        prompts.extend(self.prompt(&prompt));
        self.play(prompts, After::Listen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(mode: IvrMode, announcement: Option<&str>) -> (IvrRun, Vec<Step>) {
        let c = IvrConfig::default();
        IvrRun::start(
            &c,
            c.nodes(),
            mode,
            announcement.map(|t| PromptSource::Text {
                voice: "ru".into(),
                text: t.into(),
            }),
            "ru",
        )
    }

    fn play_id(steps: &[Step]) -> u64 {
        steps
            .iter()
            .find_map(|s| match s {
                Step::Play { id, .. } => Some(*id),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn the_builtin_menu_is_consistent() {
        IvrConfig::default().check().unwrap();
        let c = IvrConfig {
            day: "nowhere".into(),
            ..IvrConfig::default()
        };
        assert!(c.check().unwrap_err().contains("nowhere"));
    }

    #[test]
    fn a_digit_interrupts_the_menu_and_picks_the_queue() {
        let now = Instant::now();
        let (mut run, steps) = start(IvrMode::Day, None);
        assert_eq!(play_id(&steps), 1);
        let steps = run.digit('2', now);
        assert_eq!(steps[0], Step::Stop);
        assert_eq!(steps[1], Step::Queue("technical".into()));
        let bye = play_id(&steps);
        assert!(
            run.digit('3', now).is_empty(),
            "digits during the transfer prompt are ignored"
        );
        assert_eq!(run.played(bye, now), vec![Step::Hangup]);
    }

    #[test]
    fn the_announcement_comes_first_and_is_not_interrupted() {
        let now = Instant::now();
        let (mut run, steps) = start(IvrMode::Emergency, Some("Авария"));
        let Step::Play { id, prompts } = &steps[0] else {
            panic!()
        };
        assert!(matches!(&prompts[0], PromptSource::Text { text, .. } if text == "Авария"));
        assert!(run.digit('1', now).is_empty());
        let menu = run.played(*id, now);
        let Step::Play { prompts, .. } = &menu[0] else {
            panic!()
        };
        assert!(
            matches!(&prompts[0], PromptSource::Text { text, .. } if text.contains("Бухгалтерия"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_repeat_the_menu_then_go_to_fail() {
        let (mut run, steps) = start(IvrMode::Night, None);
        let mut id = play_id(&steps);
        for _ in 0..2 {
            assert!(run.played(id, Instant::now()).is_empty());
            let deadline = run.next_wakeup().unwrap();
            tokio::time::advance(deadline - Instant::now()).await;
            let steps = run.tick(Instant::now());
            id = play_id(&steps);
        }
        run.played(id, Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        // Third timeout: the night menu's fail node says goodbye.
        let steps = run.tick(Instant::now());
        let Step::Play { id, prompts } = &steps[0] else {
            panic!("{steps:?}")
        };
        assert!(matches!(&prompts[0], PromptSource::Text { text, .. } if text == "До свидания."));
        assert_eq!(run.played(*id, Instant::now()), vec![Step::Hangup]);
    }

    #[test]
    fn collect_stops_at_hash_or_max() {
        let now = Instant::now();
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "acct".to_owned(),
            Node::Collect {
                prompt: Prompt::text("Номер счёта", "Account"),
                max_digits: 4,
                next: "end".into(),
            },
        );
        nodes.insert("end".to_owned(), Node::Hangup { prompt: None });
        let c = IvrConfig {
            day: "acct".into(),
            nodes: nodes.clone(),
            ..IvrConfig::default()
        };
        let (mut run, _) = IvrRun::start(&c, nodes, IvrMode::Day, None, "en");
        assert!(run.digit('1', now).contains(&Step::Stop));
        assert!(run.digit('2', now).is_empty());
        assert_eq!(run.digit('#', now), vec![Step::Hangup]);
    }

    fn asked(steps: &[Step]) -> Option<Ask> {
        steps.iter().find_map(|s| match s {
            Step::Ask(a) => Some(a.clone()),
            _ => None,
        })
    }

    fn spoken(steps: &[Step]) -> String {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Play { prompts, .. } => Some(prompts),
                _ => None,
            })
            .flatten()
            .filter_map(|p| match p {
                PromptSource::Text { text, .. } => Some(text.as_str()),
                PromptSource::File(_) => None,
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn menu_key_5_walks_the_meter_robot_to_a_stored_reading() {
        use crate::storage::meters::MeterKind;
        use crate::telephony::meters::{MeterAnswer, MeterAsk, MeterInfo};
        let now = Instant::now();
        let (mut run, _) = start(IvrMode::Day, None);
        let steps = run.digit('5', now);
        assert_eq!(steps[0], Step::Stop);
        assert_eq!(asked(&steps), Some(Ask::Meters(MeterAsk::CallerAccount)));
        assert_eq!(run.state(), "meter_readings:answer");
        assert!(run.digit('1', now).is_empty(), "no keys while asking");
        let steps = run.answer(Answer::Meters(MeterAnswer::CallerAccount(None)), now);
        assert!(spoken(&steps).contains("Введите номер лицевого счёта"));
        run.played(play_id(&steps), now);
        assert_eq!(run.state(), "meter_readings:digits");
        for d in "7102".chars() {
            assert!(run.digit(d, now).is_empty());
        }
        let steps = run.digit('#', now);
        assert_eq!(
            asked(&steps),
            Some(Ask::Meters(MeterAsk::Account("7102".into())))
        );
        let meter = MeterInfo {
            id: 3,
            kind: MeterKind::HotWater,
            serial: "HW-1".into(),
            last_value: Some(50.0),
            last_at: None,
            monthly_increase: None,
        };
        let steps = run.answer(Answer::Meters(MeterAnswer::Meters(Some(vec![meter]))), now);
        assert!(spoken(&steps).contains("горячая вода"), "{steps:?}");
        // Keys interrupt the question.
        assert_eq!(run.digit('5', now), vec![Step::Stop]);
        run.digit('2', now);
        let steps = run.digit('#', now);
        assert!(spoken(&steps).contains("Вы ввели 52."), "{steps:?}");
        let steps = run.digit('1', now);
        assert_eq!(
            asked(&steps),
            Some(Ask::Meters(MeterAsk::Store {
                meter_id: 3,
                value: 52.0,
                questioned: false
            }))
        );
        let steps = run.answer(Answer::Meters(MeterAnswer::Stored), now);
        assert!(spoken(&steps).contains("Спасибо"), "{steps:?}");
        assert_eq!(run.played(play_id(&steps), now), vec![Step::Hangup]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_database_that_does_not_answer_ends_the_robot_politely() {
        let (mut run, _) = start(IvrMode::Day, None);
        run.digit('5', Instant::now());
        tokio::time::advance(ASK_TIMEOUT).await;
        let steps = run.tick(Instant::now());
        assert!(spoken(&steps).contains("Попробуйте позже"), "{steps:?}");
        let late = run.answer(
            Answer::Meters(crate::telephony::meters::MeterAnswer::CallerAccount(None)),
            Instant::now(),
        );
        assert!(late.is_empty(), "a late answer is ignored");
        assert_eq!(
            run.played(play_id(&steps), Instant::now()),
            vec![Step::Hangup]
        );
    }

    #[test]
    fn key_9_after_the_announcement_subscribes_then_returns_to_the_menu() {
        let now = Instant::now();
        let (mut run, steps) = start(IvrMode::Emergency, Some("Авария"));
        let steps = run.played(play_id(&steps), now);
        // Without an outage, 9 is a wrong key.
        let (mut plain, _) = start(IvrMode::Day, None);
        assert!(asked(&plain.digit(NOTIFY_KEY, now)).is_none());
        run.offer_notify_when_over(Some(44));
        let menu = play_id(&steps);
        let steps = run.digit(NOTIFY_KEY, now);
        assert_eq!(asked(&steps), Some(Ask::NotifyWhenOver { outage_id: 44 }));
        let steps = run.answer(Answer::NotifyWhenOver(true), now);
        assert!(spoken(&steps).contains("SMS"), "{steps:?}");
        let again = run.played(play_id(&steps), now);
        assert!(
            spoken(&again).contains("Бухгалтерия"),
            "back to the menu: {again:?}"
        );
        assert_ne!(play_id(&again), menu);
        assert!(asked(&run.digit(NOTIFY_KEY, now)).is_none(), "offered once");
    }

    #[test]
    fn prompts_fall_back_to_the_other_language() {
        let p = Prompt {
            ru: Some("Привет".into()),
            ..Prompt::default()
        };
        assert_eq!(
            p.source("en"),
            Some(PromptSource::Text {
                voice: "ru".into(),
                text: "Привет".into()
            })
        );
    }
}
