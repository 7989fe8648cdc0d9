package nftables

import (
	"fmt"
	"strings"
)

// Counter is what the kernel counted for one rule of shunt's tables: the packets and bytes its counter
// expression saw.
type Counter struct {
	// Table and Chain name the rule's chain as the plan does (redirect.TableNAT, redirect.ChainOutput,
	// "OUTPUT"), so that a counter pairs with redirect.Chain.Rules[Index] and its Flow and Why.
	Table, Chain string
	// NFTTable and NFTChain name it as the kernel does: istio-proxy-nat, istio-output, output.
	NFTTable, NFTChain string
	// Index is the rule's position in its chain, from 0.
	Index int
	// Rule is the rule's expressions as Read describes them (RuleState.Exprs), counter values aside.
	Rule           string
	Packets, Bytes uint64
}

func (c Counter) String() string {
	return fmt.Sprintf("%s %s #%d [%d:%d] %s", c.NFTTable, c.NFTChain, c.Index, c.Packets, c.Bytes, c.Rule)
}

// PlanTable is the engine table of one of shunt's nftables tables: the inverse of TableName.
func PlanTable(name string) string { return strings.TrimPrefix(name, TableName("")) }

// PlanChain is the engine chain of an nftables chain: the inverse of ChainName for the engine's
// chains, which are upper case with underscores.
func PlanChain(name string) string { return strings.ToUpper(strings.ReplaceAll(name, "-", "_")) }
