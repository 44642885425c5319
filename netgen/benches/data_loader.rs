//! Criterion benches of netgen's data loader (`cargo bench -p netgen --bench data_loader`):
//! training batches (augmentation included) of the Debian Fashion-MNIST at batch 128, and of an
//! image folder of 500×375 JPEGs at 224×224 (RandomResizedCrop + flip) and for evaluation
//! (resize 256, centre crop 224), each with the batches built on the calling thread and by two
//! workers. Throughput is in images per second.
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use netgen::data::{Data, DataOptions, DataSource, FASHION_MNIST_DIR};

fn opts(workers: usize, input_size: Option<usize>) -> DataOptions {
    DataOptions {
        input_size,
        augment: true,
        workers,
        prefetch: 4,
    }
}

fn fashion_mnist(c: &mut Criterion) {
    if !Path::new(FASHION_MNIST_DIR).is_dir() {
        eprintln!("skipping the Fashion-MNIST bench: {FASHION_MNIST_DIR} is missing");
        return;
    }
    let (batches, batch) = (40, 128);
    let mut g = c.benchmark_group("fashion_mnist_train_b128");
    g.sample_size(10);
    g.throughput(Throughput::Elements((batches * batch) as u64));
    for workers in [0, 2] {
        let data = Data::open(&DataSource::default(), &opts(workers, None)).expect("Fashion-MNIST");
        g.bench_function(format!("workers{workers}"), |b| {
            b.iter(|| {
                for x in data.train_batches(0, 1, batch, 0).take(batches) {
                    black_box(x.expect("batch"));
                }
            })
        });
    }
    g.finish();
}

/// An image folder with `n` 500×375 JPEGs (quality 90) in two classes, train and val alike.
fn jpeg_folder(root: &Path, n: usize) {
    for split in ["train", "val"] {
        for k in 0..n {
            let dir = root.join(split).join(format!("class{}", k % 2));
            std::fs::create_dir_all(&dir).unwrap();
            let img = image::RgbImage::from_fn(500, 375, |x, y| {
                let v = |a: u32, b: u32| ((x * a + y * b + k as u32 * 17) % 251) as u8;
                image::Rgb([v(3, 1), v(1, 2), v((x / 7) % 5, 3)])
            });
            let f = std::fs::File::create(dir.join(format!("{k:04}.jpg"))).unwrap();
            let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(f), 90);
            enc.encode_image(&img).unwrap();
        }
    }
}

fn image_folder(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let n = 32;
    jpeg_folder(tmp.path(), n);
    let src = DataSource::ImageFolder(tmp.path().into());
    let mut g = c.benchmark_group("imagefolder_500x375_jpeg_to_224");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    for workers in [0, 2] {
        let data = Data::open(&src, &opts(workers, Some(224))).expect("image folder");
        g.bench_function(format!("train_workers{workers}"), |b| {
            b.iter(|| {
                for x in data.train_batches(0, 1, 8, 0) {
                    black_box(x.expect("batch"));
                }
            })
        });
        g.bench_function(format!("eval_workers{workers}"), |b| {
            b.iter(|| {
                for x in data.test_batches(8) {
                    black_box(x.expect("batch"));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fashion_mnist, image_folder);
criterion_main!(benches);
