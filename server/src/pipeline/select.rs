//! Choosing among candidates by execution: the docstring gates, the
//! generated inputs vote.
//!
//! After every candidate ran on every test case, each candidate has an
//! outcome per test. The selection follows CodeT (Chen et al. 2022, "CodeT:
//! Code Generation with Generated Tests") and MBR-exec (Shi et al. 2022,
//! "Natural Language to Code Translation with Execution"), as AlphaCode
//! clusters its samples by behaviour:
//!
//! 1. **Gate**: a candidate must pass every ground-truth test case (the
//!    docstring's examples). With no ground truth, every candidate that
//!    loaded passes the gate.
//! 2. **Cluster**: the gated candidates are grouped by their outcomes on the
//!    generated inputs (identical outputs = same behaviour). A cluster's
//!    size is the number of samples in it (duplicate samples count: they
//!    were deduplicated before running, not before voting).
//! 3. **Rank**: largest cluster first, then the generated expectations met
//!    (the test designer's expected values, trusted only as tie-breakers),
//!    then the cluster holding the greedy candidate, then the earliest.
//!    Within a cluster, the greedy candidate first, then the earliest.
//!
//! When no candidate passes the gate, the closest one (most ground-truth
//! passes, then the largest behaviour cluster, then greedy) is returned as
//! the repair basis.
//!
//! Owns: that decision and its explanation. Pure: no model, no sandbox, no
//! store; unit tests below need nothing else.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::types::{TestOrigin, TestResult};

/// What selection needs to know about one test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestInfo {
    /// The test case's id.
    pub id: String,
    /// Ground truth (must pass) or a generated vote.
    pub origin: TestOrigin,
    /// Whether a generated test states an expected value (else it is an
    /// input only, used for clustering).
    pub has_expectation: bool,
}

/// One distinct candidate with its results.
#[derive(Debug, Clone)]
pub struct Scored {
    /// How many samples produced this code (after deduplication), at least 1.
    pub weight: u32,
    /// Whether the greedy sample is among them.
    pub greedy: bool,
    /// The module failed to load (syntax error, import-time exception).
    pub load_failed: bool,
    /// One result per test case (matched by `test_id`; missing = failed).
    pub results: Vec<TestResult>,
}

/// A group of gated candidates with identical outcomes on the generated inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// Indices into the candidates, best first.
    pub members: Vec<usize>,
    /// Samples in the cluster (sum of the members' weights).
    pub size: u32,
    /// Generated expectations its behaviour meets, of `expectations_total`.
    pub expectations_met: usize,
}

/// The decision, with what it rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// Index of the chosen candidate (`None` when there are no candidates).
    pub chosen: Option<usize>,
    /// Whether the chosen candidate passes every ground-truth test.
    pub passes_gate: bool,
    /// Gated candidates in rank order (the fallback order when the chosen
    /// one fails validation or the security check).
    pub ranking: Vec<usize>,
    /// Clusters of gated candidates, best first.
    pub clusters: Vec<Cluster>,
    /// Samples in all (the sum of weights of all candidates).
    pub samples: u32,
    /// Samples that passed the gate.
    pub gated_samples: u32,
    /// Generated test cases that state an expected value.
    pub expectations_total: usize,
    /// Ground-truth tests the chosen candidate passes, of `ground_truth_total`.
    pub ground_truth_passed: usize,
    /// Ground-truth tests in all.
    pub ground_truth_total: usize,
    /// Generated test cases (inputs, with or without an expected value).
    pub generated_total: usize,
    /// One sentence a user can read: why this candidate.
    pub reason: String,
}

fn result_for<'a>(c: &'a Scored, id: &str) -> Option<&'a TestResult> {
    c.results.iter().find(|r| r.test_id == id)
}

fn passed(c: &Scored, id: &str) -> bool {
    !c.load_failed && result_for(c, id).is_some_and(|r| r.passed)
}

/// The behaviour key of one result: the sandbox's canonical outcome, or
/// (from older runs) the error type and repr.
pub fn outcome_key(r: Option<&TestResult>) -> String {
    match r {
        None => "<not run>".to_string(),
        Some(r) => r.outcome.clone().unwrap_or_else(|| {
            format!(
                "{}|{}",
                r.error_type.as_deref().unwrap_or(""),
                r.actual.as_deref().unwrap_or("")
            )
        }),
    }
}

/// Chooses among `candidates` given `tests`. See the module header for the
/// rules. Deterministic: equal inputs give equal selections.
pub fn select(candidates: &[Scored], tests: &[TestInfo]) -> Selection {
    let truth: Vec<&TestInfo> = tests
        .iter()
        .filter(|t| t.origin.is_ground_truth())
        .collect();
    let generated: Vec<&TestInfo> = tests
        .iter()
        .filter(|t| !t.origin.is_ground_truth())
        .collect();
    let expectations_total = generated.iter().filter(|t| t.has_expectation).count();
    let truth_passes = |c: &Scored| truth.iter().filter(|t| passed(c, &t.id)).count();
    let signature = |c: &Scored| -> Vec<String> {
        generated
            .iter()
            .map(|t| outcome_key(result_for(c, &t.id)))
            .collect()
    };
    let expectations_met = |c: &Scored| {
        generated
            .iter()
            .filter(|t| t.has_expectation && passed(c, &t.id))
            .count()
    };
    let samples: u32 = candidates.iter().map(|c| c.weight.max(1)).sum();

    let gated: Vec<usize> = (0..candidates.len())
        .filter(|&i| !candidates[i].load_failed && truth_passes(&candidates[i]) == truth.len())
        .collect();
    let clusters = cluster(candidates, &gated, &signature, &expectations_met);
    let ranking: Vec<usize> = clusters.iter().flat_map(|c| c.members.clone()).collect();
    let gated_samples: u32 = gated.iter().map(|&i| candidates[i].weight.max(1)).sum();

    let (chosen, passes_gate) = match ranking.first() {
        Some(&i) => (Some(i), true),
        None => {
            // Nobody passes: the closest candidate is the repair basis.
            let loaded: Vec<usize> = (0..candidates.len())
                .filter(|&i| !candidates[i].load_failed)
                .collect();
            let pool = if loaded.is_empty() {
                (0..candidates.len()).collect()
            } else {
                loaded
            };
            let all_sig = |c: &Scored| -> Vec<String> {
                tests
                    .iter()
                    .map(|t| outcome_key(result_for(c, &t.id)))
                    .collect()
            };
            let mut votes: BTreeMap<Vec<String>, u32> = BTreeMap::new();
            for &i in &pool {
                *votes.entry(all_sig(&candidates[i])).or_default() += candidates[i].weight.max(1);
            }
            let best = pool.iter().copied().max_by_key(|&i| {
                let c = &candidates[i];
                (
                    truth_passes(c),
                    votes.get(&all_sig(c)).copied().unwrap_or(0),
                    c.greedy,
                    std::cmp::Reverse(i),
                )
            });
            (best, false)
        }
    };
    let ground_truth_passed = chosen.map_or(0, |i| truth_passes(&candidates[i]));
    let mut sel = Selection {
        chosen,
        passes_gate,
        ranking,
        clusters,
        samples,
        gated_samples,
        expectations_total,
        ground_truth_passed,
        ground_truth_total: truth.len(),
        generated_total: generated.len(),
        reason: String::new(),
    };
    sel.reason = explain(&sel, candidates, generated.len());
    sel
}

impl Selection {
    /// Why a choice that passes the gate still cannot count as confirmed:
    /// the docstring has no examples (nothing is ground truth) and either no
    /// generated input ran, or the largest group of samples that agree on the
    /// generated inputs is no strict majority. The proposal is then offered as
    /// not passing, with this sentence as its reason, instead of accepted.
    /// `None` when the choice is confirmed, or does not pass the gate.
    ///
    /// On the dev set (`bench/results/dev-both-final/`) the three accepted
    /// answers of docstrings without examples whose candidates disagreed
    /// (4-5 behaviours among 5 samples) were all wrong; the one whose 5
    /// samples agreed was right.
    pub fn unconfirmed(&self) -> Option<String> {
        if !self.passes_gate || self.ground_truth_total > 0 {
            return None;
        }
        let hint = "add an example (`>>> f(...)` and its result) to the docstring";
        if self.generated_total == 0 {
            return Some(format!(
                "the docstring has no examples and no generated input ran, so nothing checked this code; {hint}"
            ));
        }
        let top = self.clusters.first().map_or(0, |c| c.size);
        (top * 2 <= self.samples).then(|| {
            format!(
                "the docstring has no examples and the candidates disagree: the largest group that behaves alike has {top} of {} samples, no majority; {hint}",
                self.samples
            )
        })
    }
}

/// Groups the gated candidates by signature and orders clusters and members.
fn cluster(
    candidates: &[Scored],
    gated: &[usize],
    signature: &dyn Fn(&Scored) -> Vec<String>,
    expectations_met: &dyn Fn(&Scored) -> usize,
) -> Vec<Cluster> {
    let mut groups: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
    for &i in gated {
        groups.entry(signature(&candidates[i])).or_default().push(i);
    }
    let mut clusters: Vec<Cluster> = groups
        .into_values()
        .map(|mut members| {
            members.sort_by_key(|&i| (!candidates[i].greedy, i));
            let size = members.iter().map(|&i| candidates[i].weight.max(1)).sum();
            let expectations_met = expectations_met(&candidates[members[0]]);
            Cluster {
                members,
                size,
                expectations_met,
            }
        })
        .collect();
    clusters.sort_by_key(|c| {
        let has_greedy = c.members.iter().any(|&i| candidates[i].greedy);
        (
            std::cmp::Reverse(c.size),
            std::cmp::Reverse(c.expectations_met),
            !has_greedy,
            c.members[0],
        )
    });
    clusters
}

/// The sentence shown in the review and `report.md`.
fn explain(sel: &Selection, candidates: &[Scored], n_generated: usize) -> String {
    let Some(chosen) = sel.chosen else {
        return "no candidate produced usable code".to_string();
    };
    let who = if candidates[chosen].greedy {
        "the greedy candidate"
    } else {
        "a sampled candidate"
    };
    if !sel.passes_gate {
        return format!(
            "no candidate of {} passes every docstring example; {who} is closest ({} of {} examples pass)",
            sel.samples, sel.ground_truth_passed, sel.ground_truth_total
        );
    }
    let gate = if sel.ground_truth_total == 0 {
        "the docstring has no examples to gate on".to_string()
    } else {
        format!(
            "{} of {} candidates pass all {} docstring example(s)",
            sel.gated_samples, sel.samples, sel.ground_truth_total
        )
    };
    let top = &sel.clusters[0];
    if n_generated == 0 {
        return format!("{gate}; no generated inputs to compare them on; chose {who}");
    }
    let mut why = format!(
        "{gate}; {} of them agree on all {n_generated} generated input(s)",
        top.size
    );
    if sel.clusters.len() > 1 {
        let second = &sel.clusters[1];
        why.push_str(&format!(
            " ({} behaviour(s) among them; the next largest has {})",
            sel.clusters.len(),
            second.size
        ));
        if second.size == top.size {
            if top.expectations_met > second.expectations_met {
                why.push_str(&format!(
                    "; tie broken by generated expectations met ({} vs {} of {})",
                    top.expectations_met, second.expectations_met, sel.expectations_total
                ));
            } else {
                why.push_str("; tie broken in favour of the greedy candidate's behaviour");
            }
        }
    }
    why.push_str(&format!("; chose {who}"));
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, origin: TestOrigin, has_expectation: bool) -> TestInfo {
        TestInfo {
            id: id.into(),
            origin,
            has_expectation,
        }
    }

    /// A result: `out` is the behaviour key, `pass` whether its expectation held.
    fn r(id: &str, pass: bool, out: &str) -> TestResult {
        TestResult {
            test_id: id.into(),
            passed: pass,
            error_type: None,
            message: None,
            traceback: None,
            actual: Some(out.into()),
            duration_ms: 1,
            outcome: Some(out.into()),
        }
    }

    fn cand(greedy: bool, weight: u32, results: Vec<TestResult>) -> Scored {
        Scored {
            weight,
            greedy,
            load_failed: false,
            results,
        }
    }

    fn tests() -> Vec<TestInfo> {
        vec![
            t("ex1", TestOrigin::Docstring, true),
            t("gen1", TestOrigin::Generated, false),
            t("gen2", TestOrigin::Generated, true),
        ]
    }

    #[test]
    fn the_docstring_gates_before_any_vote() {
        // Three samples agree on a behaviour that fails the docstring example;
        // the lone candidate that passes it wins.
        let wrong = vec![
            r("ex1", false, "1"),
            r("gen1", true, "a"),
            r("gen2", true, "b"),
        ];
        let right = vec![
            r("ex1", true, "2"),
            r("gen1", true, "x"),
            r("gen2", false, "y"),
        ];
        let c = vec![cand(true, 3, wrong), cand(false, 1, right)];
        let s = select(&c, &tests());
        assert_eq!((s.chosen, s.passes_gate), (Some(1), true));
        assert_eq!(s.ranking, vec![1]);
        assert!(s.reason.contains("1 of 4 candidates pass"), "{}", s.reason);
    }

    #[test]
    fn the_largest_cluster_wins_over_the_greedy_candidate() {
        let a = |out: &str| {
            vec![
                r("ex1", true, "2"),
                r("gen1", true, out),
                r("gen2", true, "y"),
            ]
        };
        let c = vec![
            cand(true, 1, a("greedy-way")),
            cand(false, 1, a("common")),
            cand(false, 2, a("common")),
        ];
        let s = select(&c, &tests());
        assert_eq!(s.chosen, Some(1));
        assert_eq!(s.clusters[0].size, 3);
        assert_eq!(s.ranking, vec![1, 2, 0], "the greedy one is the fallback");
        assert!(s.reason.contains("3 of them agree"), "{}", s.reason);
    }

    #[test]
    fn ties_go_to_expectations_met_then_to_the_greedy_behaviour() {
        let with = |out: &str, meets: bool| {
            vec![
                r("ex1", true, "2"),
                r("gen1", true, out),
                r("gen2", meets, out),
            ]
        };
        // Equal sizes: the one meeting the generated expectation wins.
        let c = vec![
            cand(true, 1, with("g", false)),
            cand(false, 1, with("s", true)),
        ];
        let s = select(&c, &tests());
        assert_eq!(s.chosen, Some(1));
        assert!(s.reason.contains("expectations met"), "{}", s.reason);
        // Equal sizes and expectations: the greedy behaviour wins.
        let c = vec![
            cand(false, 1, with("s", true)),
            cand(true, 1, with("g", true)),
        ];
        let s = select(&c, &tests());
        assert_eq!(s.chosen, Some(1));
        assert!(s.reason.contains("greedy"), "{}", s.reason);
    }

    #[test]
    fn within_a_cluster_the_greedy_candidate_is_chosen() {
        let same = || {
            vec![
                r("ex1", true, "2"),
                r("gen1", true, "z"),
                r("gen2", true, "y"),
            ]
        };
        let c = vec![cand(false, 1, same()), cand(true, 1, same())];
        let s = select(&c, &tests());
        assert_eq!(s.chosen, Some(1));
        assert_eq!(s.clusters.len(), 1);
        assert_eq!(s.clusters[0].members, vec![1, 0]);
    }

    #[test]
    fn without_a_passing_candidate_the_closest_is_the_repair_basis() {
        let two_tests = vec![
            t("ex1", TestOrigin::Docstring, true),
            t("ex2", TestOrigin::Docstring, true),
        ];
        let c = vec![
            cand(true, 1, vec![r("ex1", false, "0"), r("ex2", false, "0")]),
            cand(false, 1, vec![r("ex1", true, "1"), r("ex2", false, "5")]),
            Scored {
                weight: 1,
                greedy: false,
                load_failed: true,
                results: vec![],
            },
        ];
        let s = select(&c, &two_tests);
        assert_eq!((s.chosen, s.passes_gate), (Some(1), false));
        assert!(s.ranking.is_empty());
        assert_eq!((s.ground_truth_passed, s.ground_truth_total), (1, 2));
        assert!(s.reason.contains("closest (1 of 2"), "{}", s.reason);
    }

    #[test]
    fn no_ground_truth_means_every_loaded_candidate_votes() {
        let only_gen = vec![t("gen1", TestOrigin::Generated, false)];
        let c = vec![
            cand(true, 1, vec![r("gen1", true, "a")]),
            cand(false, 2, vec![r("gen1", true, "b")]),
            Scored {
                weight: 5,
                greedy: false,
                load_failed: true,
                results: vec![],
            },
        ];
        let s = select(&c, &only_gen);
        assert_eq!((s.chosen, s.passes_gate), (Some(1), true));
        assert!(s.reason.contains("no examples"), "{}", s.reason);
        assert_eq!(s.samples, 8);
    }

    #[test]
    fn without_examples_only_a_majority_confirms_the_choice() {
        let only_gen = vec![
            t("gen1", TestOrigin::Generated, false),
            t("gen2", TestOrigin::Generated, false),
        ];
        let behaving = |a: &str, b: &str| vec![r("gen1", true, a), r("gen2", true, b)];
        // 2 of 5 agree: chosen, but not confirmed.
        let split = vec![
            cand(true, 2, behaving("1", "2")),
            cand(false, 1, behaving("1", "3")),
            cand(false, 1, behaving("0", "2")),
            cand(false, 1, behaving("4", "4")),
        ];
        let s = select(&split, &only_gen);
        assert_eq!((s.chosen, s.passes_gate), (Some(0), true));
        let why = s.unconfirmed().expect("no majority");
        assert!(
            why.contains("2 of 5") && why.contains("add an example"),
            "{why}"
        );
        // 3 of 5 agree: confirmed.
        let agreed = vec![
            cand(true, 3, behaving("1", "2")),
            cand(false, 2, behaving("0", "2")),
        ];
        assert_eq!(select(&agreed, &only_gen).unconfirmed(), None);
        // No example and no generated input: nothing checked it.
        let nothing = select(&[cand(true, 1, vec![])], &[]);
        assert!(nothing.passes_gate);
        assert!(nothing.unconfirmed().unwrap().contains("nothing checked"));
        // With docstring examples, the gate is the confirmation.
        let c = vec![
            cand(
                true,
                1,
                vec![
                    r("ex1", true, "2"),
                    r("gen1", true, "a"),
                    r("gen2", true, "a"),
                ],
            ),
            cand(
                false,
                1,
                vec![
                    r("ex1", true, "2"),
                    r("gen1", true, "b"),
                    r("gen2", true, "b"),
                ],
            ),
            cand(
                false,
                1,
                vec![
                    r("ex1", true, "2"),
                    r("gen1", true, "c"),
                    r("gen2", true, "c"),
                ],
            ),
        ];
        assert_eq!(select(&c, &tests()).unconfirmed(), None);
    }

    #[test]
    fn no_candidates_selects_nothing() {
        let s = select(&[], &tests());
        assert_eq!(s.chosen, None);
        assert!(!s.passes_gate);
    }
}
