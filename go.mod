module github.com/popvmm/popvmm

go 1.26.8
