package reconcile_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/report/kgsim"
)

// The data set: four hours of usage through the real pipeline, with the expectations computed here from the
// inputs alone (never read back from the report):
//   - t-a, t-b, t-c, t-d: tokens (SUM, step by month, unit_scale 0.001: every hour carries a remainder);
//     t-a gets late usage of hour 0 carried into hour 2; t-c is paused before hour 3 is pushed (its record
//     stays PENDING past its deadline); t-d is released at 01:30 (its last remainder is written off);
//   - c-a, c-b: calls (COUNT, fixed, USD); KooGallery does not know c-b, so all its records are REJECTED;
//   - p-a: peak (MAX, tier); a late sample of hour 0 is dropped;
//   - usage of a subject nobody has is held as unmatched;
//   - hours 0-2 are pushed at H+65m (on time), hour 3 at H+2h (45 minutes after its due time H+1h15m).

type expectInstance struct {
	id, meter, sku, currency string
	events                   int64
	quantity                 decimal.Decimal
	hourly                   map[int]decimal.Decimal // usage_value per hour
	amounts                  map[int]decimal.Decimal // expected amount per hour
	rejected                 bool
	pendingHours             map[int]bool
}

func (e *expectInstance) pushed() decimal.Decimal { return sumMap(e.hourly, nil) }

func (e *expectInstance) accepted() decimal.Decimal {
	if e.rejected {
		return decimal.Zero
	}
	return sumMap(e.hourly, e.pendingHours)
}

func (e *expectInstance) expectedAmount() decimal.Decimal {
	if e.rejected {
		return decimal.Zero
	}
	return sumMap(e.amounts, nil)
}

func sumMap(m map[int]decimal.Decimal, skip map[int]bool) decimal.Decimal {
	s := decimal.Zero
	for h, v := range m {
		if !skip[h] {
			s = s.Add(v)
		}
	}
	return s
}

type dataSet struct {
	r         *rig
	instances []*expectInstance // in instance id order
	byID      map[string]*expectInstance
	hours     int
}

var (
	d0001 = decimal.RequireFromString("0.001")
	five  = decimal.NewFromInt(5)
)

// stepG is the graduated price of an accumulated usage x on the TOK plan: 0.3 up to 5, 0.2 above.
func stepG(x decimal.Decimal) decimal.Decimal {
	low := decimal.Min(x, five)
	high := decimal.Max(decimal.Zero, x.Sub(five))
	return low.Mul(decimal.RequireFromString("0.3")).Add(high.Mul(decimal.RequireFromString("0.2")))
}

func tokenValue(k, h, j int) string {
	return fmt.Sprintf("%d.%03d", 1000+337*k+211*h+97*j, 100+13*k+7*h+j)
}

var peakValues = [4][3]string{{"7.5", "2", "1.25"}, {"12.25", "3", "12"}, {"10", "9.9999", "4"}, {"3.0001", "1", "0.5"}}

// pushedDataSet builds the data set and returns it with r.now at 03:00 + 3h (the report's "now").
func pushedDataSet(t *testing.T) *dataSet {
	t.Helper()
	r := newRig(t)
	ds := &dataSet{r: r, byID: map[string]*expectInstance{}, hours: 4}
	add := func(id, subject, meter, sku, currency string) *expectInstance {
		r.apply(instance.Spec{InstanceID: id, Subject: subject, Meter: meter, SKU: sku})
		e := &expectInstance{id: id, meter: meter, sku: sku, currency: currency, hourly: map[int]decimal.Decimal{},
			amounts: map[int]decimal.Decimal{}, pendingHours: map[int]bool{}}
		ds.instances = append(ds.instances, e)
		ds.byID[id] = e
		return e
	}
	ca, cb := add("c-a", "ca", "calls", "CALL", "USD"), add("c-b", "cb", "calls", "CALL", "USD")
	pa := add("p-a", "pa", "peak", "PEAK", "CNY")
	toks := []*expectInstance{add("t-a", "sa", "tokens", "TOK", "CNY"), add("t-b", "sb", "tokens", "TOK", "CNY"),
		add("t-c", "sc", "tokens", "TOK", "CNY"), add("t-d", "sd", "tokens", "TOK", "CNY")}
	lives := map[string]kgsim.Life{}
	for _, e := range ds.instances {
		if e.id != "c-b" {
			lives[e.id] = kgsim.Life{}
		}
	}
	r.sim.SetInstances(lives)
	cb.rejected = true

	scaled := map[string][]decimal.Decimal{} // tokens instance -> scaled usage assigned to each hour
	for h := 0; h < ds.hours; h++ {
		H := hour(h)
		r.now = H.Add(50 * time.Minute)
		if h == 1 {
			rel := H.Add(30 * time.Minute).Format(time.RFC3339)
			r.apply(instance.Spec{InstanceID: "t-d", Subject: "sd", Meter: "tokens", SKU: "TOK", Status: "RELEASED", ReleasedAt: &rel})
		}
		for k, e := range toks {
			s := decimal.Zero
			if e.id == "t-d" && h > 1 {
				scaled[e.id] = append(scaled[e.id], s)
				continue
			}
			for j := 0; j < 2; j++ {
				v := tokenValue(k, h, j)
				r.event("llm_request", "s"+e.id[2:], H.Add(time.Duration(10+10*j)*time.Minute), `{"tokens":"`+v+`"}`)
				q := decimal.RequireFromString(v)
				e.events++
				e.quantity = e.quantity.Add(q)
				s = s.Add(q.Mul(d0001))
			}
			if e.id == "t-a" && h == 2 { // late usage of hour 0, carried into hour 2
				r.event("llm_request", "sa", hour(0).Add(30*time.Minute), `{"tokens":"500.5"}`)
				q := decimal.RequireFromString("500.5")
				e.events++
				e.quantity = e.quantity.Add(q)
				s = s.Add(q.Mul(d0001))
			}
			scaled[e.id] = append(scaled[e.id], s)
		}
		for i := 0; i <= h; i++ {
			r.event("api_call", "ca", H.Add(time.Duration(5+i)*time.Minute), "")
		}
		ca.events += int64(h + 1)
		ca.quantity = ca.quantity.Add(decimal.NewFromInt(int64(h + 1)))
		ca.hourly[h] = decimal.NewFromInt(int64(h + 1))
		ca.amounts[h] = ca.hourly[h].Mul(decimal.RequireFromString("0.01"))
		for i := 0; i < 2; i++ {
			r.event("api_call", "cb", H.Add(time.Duration(5+i)*time.Minute), "")
		}
		cb.events += 2
		cb.quantity = cb.quantity.Add(decimal.NewFromInt(2))
		cb.hourly[h] = decimal.NewFromInt(2)
		cb.amounts[h] = decimal.RequireFromString("0.02")
		peak := decimal.Zero
		for i, v := range peakValues[h] {
			r.event("conn_sample", "pa", H.Add(time.Duration(1+i)*time.Minute), `{"conns":"`+v+`"}`)
			peak = decimal.Max(peak, decimal.RequireFromString(v))
		}
		pa.events += 3
		pa.quantity = pa.quantity.Add(peak)
		pa.hourly[h] = peak
		price := decimal.NewFromInt(1)
		if peak.GreaterThan(decimal.NewFromInt(10)) {
			price = decimal.NewFromInt(2)
		}
		pa.amounts[h] = peak.Mul(price)
		switch h {
		case 1:
			r.event("llm_request", "nobody", H.Add(15*time.Minute), `{"tokens":"42"}`)
		case 2:
			r.event("conn_sample", "pa", hour(0).Add(20*time.Minute), `{"conns":"99"}`) // late: a MAX meter drops it
		}
		r.now = H.Add(65 * time.Minute)
		r.close(H)
		if h == 3 {
			if err := r.store.SetPause(context.Background(), "t-c", true, r.now); err != nil {
				t.Fatal(err)
			}
			r.now = H.Add(2 * time.Hour)
		}
		r.push()
	}
	// Tokens: usage_value of hour h = trunc4(S<=h) - trunc4(S<h) (the carry telescopes), and with one step period
	// (November in Asia/Shanghai) and nothing refused the amount of hour h is G(U<=h) - G(U<h).
	for _, e := range toks {
		cum := decimal.Zero
		prevU := decimal.Zero
		for h, s := range scaled[e.id] {
			cum = cum.Add(s)
			u := cum.Truncate(4)
			if e.id == "t-d" && h > 1 {
				break
			}
			e.hourly[h] = u.Sub(prevU)
			e.amounts[h] = stepG(u).Sub(stepG(prevU))
			prevU = u
		}
	}
	ds.byID["t-c"].pendingHours[3] = true
	r.now = hour(3).Add(3 * time.Hour)
	return ds
}

// lines counts the instance-hours with a closed row: every instance every hour, except t-d after its release.
func (ds *dataSet) lines() int { return len(ds.instances)*ds.hours - 2 }
