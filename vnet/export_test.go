package vnet

// CreateTap is createTap for the tests: TUNSETIFF without OpenTap's look-up
// first, to show that the kernel itself refuses an existing name.
var CreateTap = createTap
