package lvm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// number is an lvs field: json format reports every value as a string
// ("10737418240", "12.50", "" for none); json_std reports numbers. Both parse.
type number float64

func (n *number) UnmarshalJSON(b []byte) error {
	s := string(bytes.Trim(b, `"`))
	if s == "" || s == "null" {
		*n = 0
		return nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("parse lvs number %q: %w", s, err)
	}
	*n = number(v)
	return nil
}

// row is one line of `lvs -o lv_name,lv_size,data_percent,metadata_percent,origin,lv_attr`.
type row struct {
	Name     string `json:"lv_name"`
	Size     number `json:"lv_size"`
	DataPct  number `json:"data_percent"`
	MetaPct  number `json:"metadata_percent"`
	Origin   string `json:"origin"`
	Attr     string `json:"lv_attr"`
	sizeByte int64
}

// thinPool reports whether the LV is a thin pool (attr 't').
func (r row) thinPool() bool { return strings.HasPrefix(r.Attr, "t") }

// thinVolume reports whether the LV is a thin volume or snapshot (attr 'V').
func (r row) thinVolume() bool { return strings.HasPrefix(r.Attr, "V") }

// state is one lvs reading of the volume group.
type state struct {
	rows []row
}

func parseReport(out []byte) (state, error) {
	var rep struct {
		Report []struct {
			LV []row `json:"lv"`
		} `json:"report"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return state{}, fmt.Errorf("parse lvs report: %w", err)
	}
	var st state
	for _, r := range rep.Report {
		for _, lv := range r.LV {
			lv.sizeByte = int64(lv.Size)
			st.rows = append(st.rows, lv)
		}
	}
	return st, nil
}

func (s state) find(name string) *row {
	for i := range s.rows {
		if s.rows[i].Name == name {
			return &s.rows[i]
		}
	}
	return nil
}

// pool is the thin pool's row, or nil.
func (s state) pool() *row {
	for i := range s.rows {
		if s.rows[i].Name == poolName && s.rows[i].thinPool() {
			return &s.rows[i]
		}
	}
	return nil
}

// virtual sums the sizes of every thin volume in the pool, ours or not:
// any of them can fill it.
func (s state) virtual() int64 {
	var sum int64
	for _, r := range s.rows {
		if r.thinVolume() {
			sum += r.sizeByte
		}
	}
	return sum
}
