//! The sweep's plots as hand-written SVG: scatter plots with labelled points, linear axes
//! with round ticks, and the Pareto front of loss against decode latency.

use crate::cli::plot::Canvas;

pub struct Point {
    pub label: String,
    pub parameters: f64,
    pub encode_ms: f64,
    pub decode_ms: f64,
    pub loss: Option<f64>,
}

/// Encode latency and decode latency per token against parameters (millions).
pub fn latency_vs_parameters(points: &[Point]) -> String {
    let xs: Vec<f64> = points.iter().map(|p| p.parameters / 1e6).collect();
    let series = [
        (
            "decode ms / token",
            "#d62728",
            points.iter().map(|p| p.decode_ms).collect::<Vec<_>>(),
        ),
        (
            "encode ms",
            "#1f77b4",
            points.iter().map(|p| p.encode_ms).collect(),
        ),
    ];
    let ys: Vec<f64> = series.iter().flat_map(|s| s.2.iter().copied()).collect();
    let mut c = Canvas::new(
        "Latency against parameters",
        "parameters (millions)",
        "latency (ms)",
        &xs,
        &ys,
    );
    for (i, (name, color, y)) in series.iter().enumerate() {
        for (k, p) in points.iter().enumerate() {
            c.dot(
                xs[k],
                y[k],
                color,
                &format!("{}: {name} {:.3}", p.label, y[k]),
            );
        }
        c.legend(i, name, color);
    }
    c.finish()
}

/// Held-out loss against decode latency, with the Pareto front (no other variant is both
/// faster and lower in loss) joined by a line.
pub fn loss_vs_latency(points: &[Point]) -> String {
    let pts: Vec<(&Point, f64)> = points
        .iter()
        .filter_map(|p| p.loss.map(|l| (p, l)))
        .collect();
    let xs: Vec<f64> = pts.iter().map(|(p, _)| p.decode_ms).collect();
    let ys: Vec<f64> = pts.iter().map(|(_, l)| *l).collect();
    let mut c = Canvas::new(
        "Held-out loss against decode latency",
        "decode latency (ms / token)",
        "held-out loss",
        &xs,
        &ys,
    );
    let front = pareto_front(&xs, &ys);
    c.polyline(
        &front.iter().map(|&i| (xs[i], ys[i])).collect::<Vec<_>>(),
        "#2ca02c",
    );
    for (k, (p, l)) in pts.iter().enumerate() {
        let color = if front.contains(&k) {
            "#2ca02c"
        } else {
            "#7f7f7f"
        };
        c.dot(
            xs[k],
            *l,
            color,
            &format!("{}: loss {l:.4}, {:.3} ms", p.label, xs[k]),
        );
    }
    c.legend(0, "Pareto front", "#2ca02c");
    c.finish()
}

/// Indices of the points no other point dominates (lower or equal in both, lower in one),
/// ordered by x.
pub fn pareto_front(xs: &[f64], ys: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]).then(ys[a].total_cmp(&ys[b])));
    let mut best = f64::INFINITY;
    let mut front = vec![];
    for i in order {
        if ys[i] < best {
            best = ys[i];
            front.push(i);
        }
    }
    front
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_front_keeps_the_undominated() {
        // (latency, loss): 1 dominates 3; 0, 1, 4 form the front.
        let xs = [1.0, 2.0, 4.0, 3.0, 5.0];
        let ys = [3.0, 2.0, 2.5, 2.2, 1.0];
        assert_eq!(pareto_front(&xs, &ys), vec![0, 1, 4]);
    }

    #[test]
    fn the_loss_plot_joins_the_front() {
        let p = |label: &str, decode_ms: f64, loss: f64| Point {
            label: label.into(),
            parameters: 1e6,
            encode_ms: 1.0,
            decode_ms,
            loss: Some(loss),
        };
        let svg = loss_vs_latency(&[p("a", 1.0, 3.0), p("b", 2.0, 2.0), p("c", 3.0, 2.5)]);
        assert_eq!(svg.matches("<polyline").count(), 1);
        // Two points on the front and the legend in green, one dominated in grey.
        assert_eq!(svg.matches(r##"fill="#2ca02c""##).count(), 3);
        assert_eq!(svg.matches(r##"fill="#7f7f7f""##).count(), 1);
    }
}
