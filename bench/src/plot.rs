//! `--plot`: latency percentiles against offered load, as an SVG drawn with plotters.

use std::path::Path;

use plotters::prelude::*;

use crate::error::BenchError;
use crate::report::LoadStep;

/// Size of the picture in pixels.
const PLOT_SIZE: (u32, u32) = (960, 600);
/// Room around the data on both (logarithmic) axes, as a factor.
const AXIS_PAD: f64 = 1.25;
/// The floor of the latency axis; a log scale cannot start at zero.
const MIN_PLOTTED_MS: f64 = 0.01;

/// A plotted line: its label, its colour and where its values come from.
type Percentile = (&'static str, RGBColor, fn(&LoadStep) -> f64);

/// Draws p50, p90 and p99 of each step against its offered load into `path`.
pub fn latency_against_load(
    path: &Path,
    title: &str,
    steps: &[LoadStep],
) -> Result<(), BenchError> {
    let failed = |e: &dyn std::fmt::Display| BenchError::Plot {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    if steps.is_empty() {
        return Err(failed(&"no load steps to plot"));
    }
    let offered: Vec<f64> = steps.iter().map(|s| s.offered_rps).collect();
    let lowest = offered.iter().copied().fold(f64::MAX, f64::min);
    let highest = offered.iter().copied().fold(0.0, f64::max);
    let fastest = steps
        .iter()
        .map(|s| s.latency_ms.p50)
        .fold(f64::MAX, f64::min)
        .max(MIN_PLOTTED_MS);
    let slowest = steps
        .iter()
        .map(|s| s.latency_ms.p99)
        .fold(fastest, f64::max);
    let root = SVGBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    // Both axes logarithmic: offered loads usually double per step, and latency past the
    // knee is orders of magnitude above latency before it.
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (lowest / AXIS_PAD..highest * AXIS_PAD)
                .log_scale()
                .with_key_points(offered),
            (fastest / AXIS_PAD..slowest * AXIS_PAD).log_scale(),
        )
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc("offered load (requests/s, log scale)")
        .y_desc("latency (ms, log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(|e| failed(&e))?;
    let series: [Percentile; 3] = [
        ("p50", BLUE, |s| s.latency_ms.p50),
        ("p90", GREEN, |s| s.latency_ms.p90),
        ("p99", RED, |s| s.latency_ms.p99),
    ];
    for (label, color, value) in series {
        let points: Vec<(f64, f64)> = steps
            .iter()
            .map(|s| (s.offered_rps, value(s).max(MIN_PLOTTED_MS)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| failed(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(|e| failed(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stats::LatencySummary;

    fn step(offered_rps: f64, p50: f64) -> LoadStep {
        LoadStep {
            offered_rps,
            throughput_rps: offered_rps,
            requests: 100,
            succeeded: 100,
            by_status: [("201".to_owned(), 100)].into(),
            by_code: Default::default(),
            latency_ms: LatencySummary {
                p50,
                p90: p50 * 2.0,
                p99: p50 * 4.0,
                p999: p50 * 5.0,
                max: p50 * 6.0,
                mean: p50,
            },
            invariants_ok: true,
        }
    }

    #[test]
    fn the_plot_is_an_svg_with_the_three_percentiles() {
        let path = std::env::temp_dir().join(format!("surge-bench-{}.svg", uuid::Uuid::new_v4()));
        latency_against_load(
            &path,
            "flash-sale",
            &[step(100.0, 1.0), step(200.0, 1.5), step(400.0, 8.0)],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for label in ["p50", "p90", "p99", "offered load"] {
            assert!(svg.contains(label), "no {label}");
        }
    }

    #[test]
    fn nothing_to_plot_is_an_error() {
        assert!(latency_against_load(Path::new("unused.svg"), "x", &[]).is_err());
    }
}
