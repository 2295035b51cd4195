"""The programs that measure and exercise the product, never deployed with it: the benchmarks
(`make bench-*`), the soak (`make soak`), the quality bench through the live system (`make
bench-quality`) and the PyFlink toolchain check. They import the product's rooms as `infra/` does."""
