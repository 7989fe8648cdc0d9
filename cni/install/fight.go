package install

import "time"

// fightState tracks another agent dropping our entry.
type fightState struct {
	streak   int       // losses in a row, each within the window of our last insert
	inserted time.Time // our last insert
	until    time.Time // no insert before
}

// lost records that another agent dropped our entry from file: one more fight. It returns how long
// to wait before putting the entry back: 0 at first, growing when the fights go on.
func (in *Installer) lost(file string, now time.Time) time.Duration {
	in.st.present = false
	in.metrics.rewrites.Inc()
	if now.Sub(in.fight.inserted) <= in.cfg.FightWindow {
		in.fight.streak++
	} else {
		in.fight.streak = 1
	}
	d := fightBackoff(in.fight.streak, in.cfg.FightThreshold, in.cfg.FightBackoff, in.cfg.FightBackoffMax)
	if d == 0 {
		in.log.Info("another agent rewrote the CNI config without our entry: putting it back", "file", file)
		return 0
	}
	in.fight.until = now.Add(d)
	in.log.Warn("another agent keeps rewriting the CNI config and dropping our entry: backing off before putting it back; "+
		"find the agent that owns the file (the primary CNI's installer) and make it keep chained plugins",
		"file", file, "times", in.fight.streak, "within", in.cfg.FightWindow, "backoff", d)
	return d
}

// fightBackoff is the wait before putting our entry back after the streak-th loss in a row: none
// below threshold, then base doubling up to max.
func fightBackoff(streak, threshold int, base, max time.Duration) time.Duration {
	if streak < threshold {
		return 0
	}
	d := base
	for range streak - threshold {
		if d *= 2; d >= max {
			return max
		}
	}
	return min(d, max)
}
