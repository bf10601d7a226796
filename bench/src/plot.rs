//! `--plot FILE.svg`: a run's latency distribution and its completions over time, as
//! one self-contained SVG (no script, no external font or stylesheet), so BENCHMARKS.md
//! can show each workload as a picture.

use std::{fmt::Write as _, time::Duration};

use crate::stats::nearest_rank;

/// What a run keeps for its picture.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// The headline latency of each task (the report's `latency_is` says which).
    pub latencies: Vec<Duration>,
    /// When each task was seen finished, from the start of the measured phase.
    pub finished: Vec<Duration>,
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 320.0;
const PANEL_WIDTH: f64 = 390.0;
const PANEL_HEIGHT: f64 = 210.0;
const TOP: f64 = 60.0;
const LEFT: [f64; 2] = [60.0, 500.0];
const HISTOGRAM_BINS: usize = 40;
const TIMELINE_BINS: usize = 60;

/// The SVG of `timeline`, titled `title` (the workload and cluster) and `figures` (its
/// headline numbers). `None` when the run kept no samples.
pub fn svg(title: &str, figures: &str, timeline: &Timeline) -> Option<String> {
    if timeline.latencies.is_empty() || timeline.finished.is_empty() {
        return None;
    }
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"##
    );
    let _ = write!(out, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ =
        write!(out, r##"<text x="20" y="22" font-size="14" font-weight="bold">{}</text>"##, escape(title));
    let _ = write!(out, r##"<text x="20" y="40" fill="#555555">{}</text>"##, escape(figures));
    latency_panel(&mut out, &timeline.latencies);
    completions_panel(&mut out, &timeline.finished);
    out.push_str("</svg>\n");
    Some(out)
}

fn latency_panel(out: &mut String, latencies: &[Duration]) {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p99) = (ms(nearest_rank(&sorted, 50.0)), ms(nearest_rank(&sorted, 99.0)));
    // The axis ends a little past p99.9: a few outliers would squash the rest.
    let top = ms(nearest_rank(&sorted, 99.9)).max(p99) * 1.05;
    let top = if top > 0.0 { top } else { 1.0 };
    let mut counts = [0usize; HISTOGRAM_BINS];
    let mut beyond = 0;
    for &sample in &sorted {
        let bin = (ms(sample) / top * HISTOGRAM_BINS as f64) as usize;
        match counts.get_mut(bin) {
            Some(count) => *count += 1,
            None => beyond += 1,
        }
    }
    let title = format!("latency, {} samples ({beyond} beyond the axis)", sorted.len());
    bars(out, 0, &title, &counts, (0.0, top), "ms", "#3b6fd6");
    for (label, at) in [("p50", p50), ("p99", p99)] {
        let x = LEFT[0] + at / top * PANEL_WIDTH;
        // Labels near the right edge go left of their line, inside the panel.
        let (text_x, anchor) =
            if x > LEFT[0] + PANEL_WIDTH * 0.75 { (x - 3.0, "end") } else { (x + 3.0, "start") };
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#d6453b" stroke-dasharray="4 3"/><text x="{text_x:.1}" y="{:.1}" fill="#d6453b" text-anchor="{anchor}">{label} {at:.2} ms</text>"##,
            TOP + PANEL_HEIGHT,
            TOP + if label == "p50" { 12.0 } else { 26.0 },
        );
    }
}

fn completions_panel(out: &mut String, finished: &[Duration]) {
    let end = finished.iter().max().copied().unwrap_or_default().as_secs_f64().max(0.001);
    let width = end / TIMELINE_BINS as f64;
    let mut counts = [0usize; TIMELINE_BINS];
    for at in finished {
        let bin = ((at.as_secs_f64() / width) as usize).min(TIMELINE_BINS - 1);
        counts[bin] += 1;
    }
    let peak_rate = counts.iter().max().copied().unwrap_or(0) as f64 / width;
    let title = format!("tasks finished per second over the run (peak {peak_rate:.0}/s)");
    bars(out, 1, &title, &counts, (0.0, end), "s", "#2e9e5b");
}

/// Bars of `counts` over `range` in panel `panel`, with a title, the x axis in `unit`
/// and the y axis from 0 to the largest count.
fn bars(
    out: &mut String,
    panel: usize,
    title: &str,
    counts: &[usize],
    range: (f64, f64),
    unit: &str,
    color: &str,
) {
    let left = LEFT[panel];
    let bottom = TOP + PANEL_HEIGHT;
    let peak = counts.iter().max().copied().unwrap_or(0).max(1) as f64;
    let bar = PANEL_WIDTH / counts.len() as f64;
    let _ = write!(out, r##"<text x="{left}" y="{:.1}">{}</text>"##, TOP - 6.0, escape(title));
    let _ = write!(
        out,
        r##"<rect x="{left}" y="{TOP}" width="{PANEL_WIDTH}" height="{PANEL_HEIGHT}" fill="#f6f7f9" stroke="#cccccc"/>"##
    );
    for (index, &count) in counts.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let height = count as f64 / peak * (PANEL_HEIGHT - 4.0);
        let _ = write!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{height:.1}" fill="{color}"/>"##,
            left + index as f64 * bar + 0.5,
            bottom - height,
            (bar - 1.0).max(0.5),
        );
    }
    let (low, high) = range;
    for (fraction, anchor) in [(0.0, "start"), (0.5, "middle"), (1.0, "end")] {
        let value = low + (high - low) * fraction;
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="{anchor}">{value:.2} {unit}</text>"##,
            left + fraction * PANEL_WIDTH,
            bottom + 16.0,
        );
    }
    let _ = write!(
        out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{peak:.0}</text>"##,
        left - 4.0,
        TOP + 10.0
    );
    let _ = write!(out, r##"<text x="{:.1}" y="{bottom:.1}" text-anchor="end">0</text>"##, left - 4.0);
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_draws_one_bar_per_busy_bin_and_marks_its_percentiles() {
        let timeline = Timeline {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            finished: (1..=100).map(|n| Duration::from_millis(n * 10)).collect(),
        };
        let svg = svg("throughput <local>", "100 tasks", &timeline).expect("samples");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("throughput &lt;local&gt;"), "the title is escaped");
        assert!(svg.contains("p50 50.00 ms") && svg.contains("p99 99.00 ms"), "{svg}");
        assert!(svg.contains("0 beyond the axis"));
        assert_eq!(svg.matches("fill=\"#2e9e5b\"").count(), TIMELINE_BINS, "a steady run fills every bin");
    }

    #[test]
    fn no_samples_no_picture() {
        assert_eq!(svg("t", "f", &Timeline::default()), None);
    }
}
