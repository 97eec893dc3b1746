//! Holds, and the decisions around them, through the rules as the writer plans them.

use std::sync::Arc;

use crate::config::Config;
use crate::registry::merge::merge;
use crate::registry::{
    Command, Decision, GateReading, Ledger, ModelSpec, Phase, RegistryError, Rollout, Verdict,
    default_plan, rules,
};

/// Model "m": version 2 in production, 3 in staging.
fn config() -> Vec<ModelSpec> {
    let text = "[[models]]\nname = \"m\"\n\
        [[models.versions]]\nversion = \"2\"\nstage = \"production\"\nendpoints = [\"http://v2:1\"]\n\
        [[models.versions]]\nversion = \"3\"\nstage = \"staging\"\nendpoints = [\"http://v3:1\"]\n";
    Config::parse(text, "test").unwrap().models
}

struct State {
    config: Vec<ModelSpec>,
    models: Vec<ModelSpec>,
    ledger: Ledger,
}

impl State {
    fn new() -> State {
        let config = config();
        State {
            models: config.clone(),
            config,
            ledger: Ledger::default(),
        }
    }

    fn apply(&mut self, command: Command) -> Result<(), RegistryError> {
        let record = rules::plan(&self.models, &self.ledger, &command, "tester")?;
        self.ledger.apply(Arc::new(record)).unwrap();
        self.models = merge(&self.config, &self.ledger).models;
        Ok(())
    }

    fn rollout(&self) -> &Rollout {
        self.models[0].rollout.as_ref().unwrap()
    }

    fn start(&mut self, shadow_gate: bool) {
        let mut plan = default_plan();
        if shadow_gate {
            // The gate needs mirroring to the candidate.
            let patch = serde_json::json!({ "percent": 100 });
            let shadow = Command::SetShadow {
                model: "m".into(),
                patch,
                reason: String::new(),
            };
            self.apply(shadow).unwrap();
            plan.gates.min_shadow_agreement = Some(0.99);
        }
        let command = Command::StartRollout {
            model: "m".into(),
            candidate: "3".into(),
            plan,
            reason: String::new(),
        };
        self.apply(command).unwrap();
    }

    fn decide(
        &mut self,
        decision: Decision,
        evidence: Vec<GateReading>,
    ) -> Result<(), RegistryError> {
        let id = Some(self.rollout().id);
        self.apply(Command::Rollout {
            model: "m".into(),
            id,
            decision,
            evidence,
            reason: "test".into(),
        })
    }
}

fn waiting(gate: &str) -> GateReading {
    GateReading {
        gate: gate.into(),
        reading: None,
        threshold: 1.5,
        verdict: Verdict::Wait,
        lower: None,
        upper: None,
        confidence: Some(0.998),
        candidate_n: 12,
        stable_n: Some(40),
        detail: String::new(),
    }
}

#[test]
fn a_held_step_keeps_its_weight_and_its_evidence_until_a_person_decides() {
    let mut state = State::new();
    state.start(false);
    let evidence = vec![waiting("p99_ratio")];
    state
        .decide(Decision::Hold { at_step: Some(0) }, evidence.clone())
        .unwrap();
    let held = state.rollout();
    assert_eq!(
        (held.phase, held.held, held.weight()),
        (Phase::Paused, true, 5.0)
    );
    assert_eq!(
        held.evidence, evidence,
        "the readings it was held on are journaled"
    );
    // Held is held: another hold, or an advance, is refused until a person acts.
    assert!(
        state
            .decide(Decision::Hold { at_step: Some(0) }, vec![])
            .is_err()
    );
    assert!(
        state
            .decide(Decision::Advance { from_step: Some(0) }, vec![])
            .is_err()
    );
    state.decide(Decision::Resume, vec![]).unwrap();
    let resumed = state.rollout();
    assert_eq!((resumed.phase, resumed.step), (Phase::Progressing, 0));
    assert!(
        resumed.evidence.is_empty(),
        "a person's decision carries no readings"
    );
}

#[test]
fn a_hold_about_another_step_is_refused() {
    let mut state = State::new();
    state.start(false);
    state
        .decide(Decision::Advance { from_step: Some(0) }, vec![])
        .unwrap();
    let stale = state.decide(Decision::Hold { at_step: Some(0) }, vec![]);
    assert!(
        matches!(stale, Err(RegistryError::RolloutRefused { .. })),
        "{stale:?}"
    );
}

#[test]
fn before_the_first_step_a_hold_or_a_pause_gives_the_candidate_nothing() {
    for decision in [Decision::Hold { at_step: None }, Decision::Pause] {
        let mut state = State::new();
        state.start(true);
        assert_eq!(state.rollout().phase, Phase::WaitingForShadow);
        state.decide(decision.clone(), vec![]).unwrap();
        let paused = state.rollout();
        assert_eq!(
            (paused.phase, paused.weight()),
            (Phase::Paused, 0.0),
            "{decision:?}"
        );
        assert_eq!(state.models[0].canary, None, "{decision:?}");
        // The shadow gate still watches: disagreement fails it while held.
        let failure = GateReading {
            verdict: Verdict::Fail,
            reading: Some(0.5),
            ..waiting("shadow_agreement")
        };
        let fail = Decision::Fail {
            failure,
            at_step: None,
        };
        state.decide(fail, vec![]).unwrap();
        assert_eq!(state.rollout().phase, Phase::RolledBack);
    }
}
