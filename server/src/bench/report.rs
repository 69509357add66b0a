//! The benchmark's summary: Markdown (pass@1 with 95% Wilson intervals, the
//! paired difference, time, calls and tokens) and a chart (plotters: SVG and PNG).

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use super::stats::{mean, quantile, wilson95};
use super::Row;

/// Per-mode aggregates.
#[derive(Debug, Clone, PartialEq)]
pub struct ModeSummary {
    /// `single` or `loop`.
    pub mode: String,
    /// Tasks run in this mode.
    pub n: usize,
    /// Tasks whose hidden tests passed.
    pub passed: usize,
    /// 95% Wilson interval of pass@1, fractions.
    pub interval: (f64, f64),
    /// Median wall time per task, s.
    pub median_s: f64,
    /// 90th percentile of wall time per task, s.
    pub p90_s: f64,
    /// Mean model calls per task.
    pub mean_calls: f64,
    /// Mean tokens (prompt + completion) per task.
    pub mean_tokens: f64,
}

/// Aggregates rows by mode (`single` first).
pub fn summarize(rows: &[Row]) -> Vec<ModeSummary> {
    let mut by: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by.entry(r.mode.as_str()).or_default().push(r);
    }
    let mut out: Vec<ModeSummary> = by
        .into_iter()
        .map(|(mode, rs)| {
            let n = rs.len();
            let passed = rs.iter().filter(|r| r.passed).count();
            let secs: Vec<f64> = rs.iter().map(|r| r.wall_ms as f64 / 1000.0).collect();
            let calls: Vec<f64> = rs.iter().map(|r| r.llm_calls as f64).collect();
            let toks: Vec<f64> = rs
                .iter()
                .map(|r| (r.prompt_tokens + r.completion_tokens) as f64)
                .collect();
            ModeSummary {
                mode: mode.to_string(),
                n,
                passed,
                interval: wilson95(passed, n),
                median_s: quantile(&secs, 0.5).unwrap_or(0.0),
                p90_s: quantile(&secs, 0.9).unwrap_or(0.0),
                mean_calls: mean(&calls).unwrap_or(0.0),
                mean_tokens: mean(&toks).unwrap_or(0.0),
            }
        })
        .collect();
    out.sort_by_key(|m| if m.mode == "single" { 0 } else { 1 });
    out
}

/// The Markdown summary.
pub fn markdown(rows: &[Row], command: &str) -> String {
    let ms = summarize(rows);
    let mut s = String::from("# docsmith bench\n\n");
    s.push_str(&format!("Command: `{command}`\n\n"));
    s.push_str("| mode | tasks | pass@1 | 95% Wilson interval | median wall | p90 wall | mean LLM calls | mean tokens |\n|---|---|---|---|---|---|---|---|\n");
    for m in &ms {
        s.push_str(&format!(
            "| {} | {} | {}/{} = {:.1}% | {:.1}% – {:.1}% | {:.1} s | {:.1} s | {:.1} | {:.0} |\n",
            m.mode,
            m.n,
            m.passed,
            m.n,
            100.0 * m.passed as f64 / m.n.max(1) as f64,
            100.0 * m.interval.0,
            100.0 * m.interval.1,
            m.median_s,
            m.p90_s,
            m.mean_calls,
            m.mean_tokens
        ));
    }
    // Paired comparison on tasks run in both modes.
    let single: BTreeMap<&str, &Row> = rows
        .iter()
        .filter(|r| r.mode == "single")
        .map(|r| (r.task_id.as_str(), r))
        .collect();
    let lp: BTreeMap<&str, &Row> = rows
        .iter()
        .filter(|r| r.mode == "loop")
        .map(|r| (r.task_id.as_str(), r))
        .collect();
    let both: Vec<&str> = single
        .keys()
        .filter(|k| lp.contains_key(*k))
        .copied()
        .collect();
    if !both.is_empty() {
        let only_loop: Vec<&str> = both
            .iter()
            .filter(|k| lp[*k].passed && !single[*k].passed)
            .copied()
            .collect();
        let only_single: Vec<&str> = both
            .iter()
            .filter(|k| single[*k].passed && !lp[*k].passed)
            .copied()
            .collect();
        let diff = (lp
            .values()
            .filter(|r| r.passed && both.contains(&r.task_id.as_str()))
            .count() as f64
            - single
                .values()
                .filter(|r| r.passed && both.contains(&r.task_id.as_str()))
                .count() as f64)
            / both.len() as f64;
        s.push_str(&format!(
            "\nPaired on {} tasks: pass@1 loop − single = {:+.1} points; solved only by the loop: {} ({}); only by single shot: {} ({}).\n",
            both.len(), 100.0 * diff, only_loop.len(), only_loop.join(", "), only_single.len(), only_single.join(", ")
        ));
    }
    // Mean time per stage over loop rows (from the pipeline's Stage events).
    let loop_rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.mode == "loop" && !r.stage_ms.is_empty())
        .collect();
    if !loop_rows.is_empty() {
        let mut total: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &loop_rows {
            for (k, v) in &r.stage_ms {
                *total.entry(k.as_str()).or_default() += v;
            }
        }
        let parts: Vec<String> = total
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {:.1} s", *v as f64 / 1000.0 / loop_rows.len() as f64))
            .collect();
        s.push_str(&format!(
            "\nLoop time per stage (mean per task): {}.\n",
            parts.join(", ")
        ));
    }
    s.push_str(&verdicts(rows));
    s.push_str(&candidates(rows));
    let failing: Vec<&Row> = rows
        .iter()
        .filter(|r| r.mode == "loop" && !r.passed)
        .collect();
    if !failing.is_empty() {
        s.push_str("\nLoop tasks failing the hidden tests (loop status: reason):\n\n");
        for r in failing {
            s.push_str(&format!(
                "- {}: {}{}\n",
                r.task_id,
                r.loop_status,
                r.reason
                    .as_deref()
                    .map(|x| format!(": {}", x.chars().take(160).collect::<String>()))
                    .unwrap_or_default()
            ));
        }
    }
    s.push_str("\nIntervals: Wilson score interval, z = 1.96 (Wilson 1927). Wall time covers generation, not scoring.\n");
    s
}

/// Where the loop wins and loses: its own verdict (`accepted` when its tests
/// passed, anything else when the budget ran out or it failed) against the
/// hidden tests, as a Markdown table. "Accepted, hidden fails" counts tasks
/// whose generated tests missed the bug (test design lost them); "not accepted,
/// hidden passes" counts correct code the loop's own tests rejected (wrong
/// generated tests, which the suspect-test judge did not drop). Empty without loop rows.
pub fn verdicts(rows: &[Row]) -> String {
    let lp: Vec<&Row> = rows.iter().filter(|r| r.mode == "loop").collect();
    if lp.is_empty() {
        return String::new();
    }
    let count = |acc: bool, pass: bool| {
        lp.iter()
            .filter(|r| (r.loop_status == "accepted") == acc && r.passed == pass)
            .count()
    };
    format!(
        "\nLoop verdict against the hidden tests ({} loop tasks):\n\n\
         | loop's own verdict | hidden tests pass | hidden tests fail |\n|---|---|---|\n\
         | accepted (its tests pass) | {} | {} (its tests missed the bug) |\n\
         | not accepted (budget spent or failed) | {} (its tests were wrong) | {} |\n",
        lp.len(),
        count(true, true),
        count(true, false),
        count(false, true),
        count(false, false)
    )
}

/// Generation against selection, from each loop row's candidates scored on
/// the hidden tests after the run: how many tasks had a correct candidate at
/// all (oracle), how often the greedy first candidate was correct, and how
/// many tasks were lost by choosing (a correct candidate existed, another was
/// chosen). Empty without scored candidates.
pub fn candidates(rows: &[Row]) -> String {
    let lp: Vec<&Row> = rows
        .iter()
        .filter(|r| r.mode == "loop" && !r.candidates.is_empty())
        .collect();
    if lp.is_empty() {
        return String::new();
    }
    let any = lp
        .iter()
        .filter(|r| r.candidates.iter().any(|c| c.passed))
        .count();
    let greedy = lp
        .iter()
        .filter(|r| {
            r.candidates
                .iter()
                .any(|c| c.round == 1 && c.greedy && c.passed)
        })
        .count();
    let lost = lp
        .iter()
        .filter(|r| !r.passed && r.candidates.iter().any(|c| c.passed))
        .count();
    let later = lp
        .iter()
        .filter(|r| {
            r.passed
                && !r
                    .candidates
                    .iter()
                    .any(|c| c.round == 1 && c.greedy && c.passed)
        })
        .count();
    let distinct: Vec<f64> = lp.iter().map(|r| r.candidates.len() as f64).collect();
    let mut s = format!(
        "\nCandidates scored on the hidden tests after the run ({} loop tasks; the loop never sees these scores):\n\n",
        lp.len()
    );
    s.push_str("| | tasks |\n|---|---|\n");
    s.push_str(&format!("| greedy candidate correct | {greedy} |\n"));
    s.push_str(&format!(
        "| some candidate of any round correct (oracle) | {any} |\n"
    ));
    s.push_str(&format!(
        "| chosen proposal correct | {} |\n",
        lp.iter().filter(|r| r.passed).count()
    ));
    s.push_str(&format!(
        "| lost by selection (a correct candidate existed, another was chosen) | {lost} |\n"
    ));
    s.push_str(&format!(
        "| won by a later round (greedy wrong, proposal correct) | {later} |\n"
    ));
    s.push_str(&format!(
        "\nDistinct candidates per task: mean {:.1}.\n",
        mean(&distinct).unwrap_or(0.0)
    ));
    s
}

/// Writes `chart.svg` and `chart.png`: pass@1 with its interval and median wall time per mode.
pub fn chart(rows: &[Row], dir: &Path) -> Result<(), String> {
    let ms = summarize(rows);
    if let Ok(font) = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf") {
        let font: &'static [u8] = Box::leak(font.into_boxed_slice());
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, font);
    }
    let svg = dir.join("chart.svg");
    draw(SVGBackend::new(&svg, (900, 420)).into_drawing_area(), &ms)?;
    let png = dir.join("chart.png");
    draw(
        BitMapBackend::new(&png, (900, 420)).into_drawing_area(),
        &ms,
    )?;
    Ok(())
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    ms: &[ModeSummary],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: &dyn std::fmt::Display| x.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (left, right) = root.split_horizontally(450);
    let n = ms.len().max(1) as f64;
    let colors = [RGBColor(90, 120, 200), RGBColor(220, 120, 60)];
    {
        let mut c = ChartBuilder::on(&left)
            .caption("pass@1 (95% Wilson interval)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(0f64..n, 0f64..100f64)
            .map_err(|x| e(&x))?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("%")
            .draw()
            .map_err(|x| e(&x))?;
        for (i, m) in ms.iter().enumerate() {
            let p = 100.0 * m.passed as f64 / m.n.max(1) as f64;
            let col = colors[i % 2];
            c.draw_series(std::iter::once(Rectangle::new(
                [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, p)],
                col.mix(0.6).filled(),
            )))
            .map_err(|x| e(&x))?;
            c.draw_series(std::iter::once(PathElement::new(
                vec![
                    (i as f64 + 0.5, 100.0 * m.interval.0),
                    (i as f64 + 0.5, 100.0 * m.interval.1),
                ],
                BLACK.stroke_width(2),
            )))
            .map_err(|x| e(&x))?;
            c.draw_series(std::iter::once(Text::new(
                format!("{} {:.0}%", m.mode, p),
                (i as f64 + 0.2, p.min(92.0) + 3.0),
                ("sans-serif", 15),
            )))
            .map_err(|x| e(&x))?;
        }
    }
    {
        let max_s = ms.iter().map(|m| m.p90_s).fold(1.0, f64::max) * 1.15;
        let mut c = ChartBuilder::on(&right)
            .caption("wall time per task (median, p90)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..n, 0f64..max_s)
            .map_err(|x| e(&x))?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("s")
            .draw()
            .map_err(|x| e(&x))?;
        for (i, m) in ms.iter().enumerate() {
            let col = colors[i % 2];
            c.draw_series(std::iter::once(Rectangle::new(
                [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, m.median_s)],
                col.mix(0.6).filled(),
            )))
            .map_err(|x| e(&x))?;
            c.draw_series(std::iter::once(Text::new(
                format!("{} {:.0}s / {:.0}s", m.mode, m.median_s, m.p90_s),
                (i as f64 + 0.2, m.median_s + max_s * 0.03),
                ("sans-serif", 15),
            )))
            .map_err(|x| e(&x))?;
        }
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, mode: &str, passed: bool, ms: u64) -> Row {
        Row {
            task_id: id.into(),
            mode: mode.into(),
            passed,
            attempts: 1,
            llm_calls: if mode == "loop" { 4 } else { 1 },
            prompt_tokens: 100,
            completion_tokens: 50,
            wall_ms: ms,
            stage_ms: Default::default(),
            dropped_tests: 0,
            loop_status: if passed {
                "accepted".into()
            } else {
                "failing".into()
            },
            reason: (!passed).then(|| "tests fail".into()),
            score_error: None,
            final_code: String::new(),
            rounds: 0,
            chosen_because: None,
            candidates: Vec::new(),
        }
    }

    #[test]
    fn summary_reports_pass_rates_intervals_and_the_paired_difference() {
        let rows = vec![
            row("T/0", "single", true, 2000),
            row("T/0", "loop", true, 60000),
            row("T/2", "single", false, 3000),
            row("T/2", "loop", true, 90000),
            row("T/4", "single", true, 1000),
            row("T/4", "loop", false, 120000),
        ];
        let md = markdown(&rows, "docsmith bench --mode both");
        assert!(md.contains("| single | 3 | 2/3 = 66.7% |"), "{md}");
        assert!(md.contains("| loop | 3 | 2/3 = 66.7% |"), "{md}");
        assert!(
            md.contains("solved only by the loop: 1 (T/2); only by single shot: 1 (T/4)"),
            "{md}"
        );
        assert!(md.contains("- T/4: failing: tests fail"), "{md}");
        let mut v = rows.clone();
        v[5].loop_status = "accepted".into(); // T/4: accepted, hidden fails
        let t = verdicts(&v);
        assert!(t.contains("(3 loop tasks)"), "{t}");
        assert!(
            t.contains("| accepted (its tests pass) | 2 | 1 (its tests missed the bug) |"),
            "{t}"
        );
        assert!(
            t.contains("| not accepted (budget spent or failed) | 0 (its tests were wrong) | 0 |"),
            "{t}"
        );
        assert!(verdicts(&rows[..1]).is_empty());
        assert!(
            md.contains("| single | 3 | 2/3 = 66.7% | 20.8% – 93.9% |"),
            "{md}"
        );
        assert!(md.contains("Wilson 1927"), "{md}");
        let mut timed = rows.clone();
        timed[1].stage_ms.insert("write_code".into(), 3000);
        timed[3].stage_ms.insert("write_code".into(), 1000);
        assert!(
            markdown(&timed, "x").contains("write_code 2.0 s"),
            "{}",
            markdown(&timed, "x")
        );
        let s = summarize(&rows);
        assert_eq!(s[0].mode, "single");
        assert_eq!(s[1].median_s, 90.0);
        let dir = tempfile::tempdir().unwrap();
        chart(&rows, dir.path()).unwrap();
        assert!(std::fs::read_to_string(dir.path().join("chart.svg"))
            .unwrap()
            .contains("<svg"));
        assert!(
            std::fs::metadata(dir.path().join("chart.png"))
                .unwrap()
                .len()
                > 1000
        );
    }
}
