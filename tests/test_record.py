"""What a run wrote is what every reader uses (simclr_tf.record): for each writer (pretrain, finetune, distill) and
each reader (eval, export, embed, knn, finetune's --checkpoint, distill's --teacher, load_model, the exported
SavedModel), on non-default architectures, the reader's outputs on the same images equal the writer's own at the
end of its run, with no architecture flag on the reader's command line. The commands run through run.py's own path
in this process (conftest.run_here): a dozen per architecture would cost a dozen TensorFlow imports as processes."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_here
from simclr_tf import weights
from simclr_tf.config import Config
from simclr_tf.data import inputs
from simclr_tf.evaluation import knn_classify

# (the architecture's flags, which projection-head layer fine-tuning starts from, the encoder's last stage, whether
# every writer and reader runs). ResNet-50's graph is slow to build (a minute per run here): its fine-tuned model
# is written and read by eval, export and load_model only.
ARCHITECTURES = {
    # Selective kernels in bottleneck blocks (ResNet-50), a 3-layer head, fine-tuned from its first layer: the
    # paper's recipe, whose head input and first layer have the same width (a head on the wrong one loads).
    'r50_sk_head3_from1': (dict(resnet_depth=50, width_multiplier=0.0625, sk_ratio=0.0625, num_proj_layers=3), 1,
                           'block_group4', False),
    # A ViT with a 2-layer head, fine-tuned from its output (layer 2).
    'vit_head2_from2': (dict(encoder='vit', vit_depth=1, vit_width=16, vit_heads=2, vit_patch_size=8,
                             num_proj_layers=2), 2, 'block1', True),
    # A linear (1-layer) head, fine-tuned from its output.
    'r18_head1_from1': (dict(resnet_depth=18, width_multiplier=0.125, num_proj_layers=1), 1, 'block_group4', True),
}
DATA = ['--eval_batch_size=8', '--train_batch_size=8', '--use_blur=false', '--warmup_epochs=0',
        '--log_every_steps=1', '--checkpoint_epochs=0']


def flags_of(values: dict) -> list:
  return [f'--{k}={str(v).lower() if isinstance(v, bool) else v}' for k, v in values.items()]


def ok(result):
  code, value = result
  assert code == 0, value
  return value


@pytest.fixture(scope='module', params=sorted(ARCHITECTURES))
def runs(request, tmp_path_factory, shapes_dir):
  """The three writers of one architecture, each with its own SavedModel and its evaluation on the test split."""
  architecture, selector, last_stage, every = ARCHITECTURES[request.param]
  root = tmp_path_factory.mktemp(request.param)
  data = DATA + [f'--data_dir={shapes_dir}', '--dataset=image_folder', '--eval_split=test']
  arch = flags_of(dict(architecture, image_size=32, proj_out_dim=8))
  ok(run_here(*data, *arch, '--mode=pretrain', f'--model_dir={root / "pre"}', '--train_steps=2',
              f'--export_at_end={str(every).lower()}'))
  ok(run_here(*data, '--mode=finetune', f'--checkpoint={root / "pre"}', f'--ft_proj_selector={selector}',
              f'--model_dir={root / "ft"}', '--train_steps=3', '--optimizer=momentum', '--learning_rate=0.5',
              '--export_at_end=true'))
  if every:
    ok(run_here(*data, '--mode=distill', f'--teacher={root / "ft"}', f'--checkpoint={root / "pre"}',
                f'--ft_proj_selector={selector}', f'--model_dir={root / "student"}', '--train_steps=2',
                '--export_at_end=true'))
  return dict(root=root, selector=selector, last_stage=last_stage, data=[f'--data_dir={shapes_dir}'],
              shapes=shapes_dir, writers=('pre', 'ft', 'student') if every else ('ft',), every=every,
              **{name: str(root / name) for name in ('pre', 'ft', 'student')})


def every_reader(runs):
  if not runs['every']:
    pytest.skip('ResNet-50: its fine-tuned model through eval, export and load_model only (test time)')


def result_of(model_dir, kind='eval', split='test'):
  return json.loads(open(os.path.join(model_dir, f'{kind}_{split}.json')).read())


def prepared_test_images(shapes_dir):
  """The test split's images as evaluation prepares them, and their labels."""
  source = inputs.make_source(Config(dataset='image_folder', data_dir=shapes_dir), 'test')
  batches = list(inputs.eval_dataset(source, Config(dataset='image_folder', data_dir=shapes_dir, image_size=32),
                                     64))
  return tf.concat([b['image'] for b in batches], 0)[:40], tf.concat([b['label'] for b in batches], 0)[:40]


def saved_outputs(path, images):
  return {k: v.numpy() for k, v in tf.saved_model.load(path)(images, trainable=False).items()}


def test_eval_uses_the_head_where_the_run_put_it(runs, tmp_path):
  """--mode=eval of each writer, of its SavedModel and of a bare checkpoint copied alone, without a flag of the
  architecture: the loss the writer measured at the end of its run (a head on another layer gives another loss)."""
  ft_ckpt = tf.train.latest_checkpoint(runs['ft'])
  bare = tmp_path / 'bare'
  bare.mkdir()
  for name in os.listdir(runs['ft']):
    if name.startswith(os.path.basename(ft_ckpt) + '.'):
      shutil.copy(os.path.join(runs['ft'], name), bare / name)
  readers = [(writer, runs[writer]) for writer in runs['writers']]
  readers += [('ft', os.path.join(runs['ft'], 'saved_model')), ('ft', str(bare / os.path.basename(ft_ckpt)))]
  for writer, checkpoint in readers:
    found = ok(run_here(*runs['data'], '--dataset=image_folder', '--mode=eval', f'--checkpoint={checkpoint}',
                        f'--model_dir={tmp_path / "eval"}', '--eval_batch_size=8'))
    written = result_of(runs[writer])
    assert found['num_examples'] == written['num_examples'] == 40
    np.testing.assert_allclose(found['loss'], written['loss'], rtol=1e-5, err_msg=checkpoint)
    assert found['top1'] == written['top1'], checkpoint


def test_export_and_load_model_compute_what_the_writer_exported(runs, tmp_path):
  images, _ = prepared_test_images(runs["shapes"])
  for writer in runs['writers']:
    own = saved_outputs(os.path.join(runs[writer], 'saved_model'), images)
    exported = tmp_path / f'{writer}_export'
    ok(run_here('--mode=export', f'--checkpoint={runs[writer]}', f'--export_dir={exported}'))
    again = saved_outputs(str(exported), images)
    model, _ = weights.load_model(runs[writer])  # the Python API, with no Config
    loaded = {k: v.numpy() for k, v in model(images, training=False).items()}
    assert set(own) == set(again) and set(own) <= set(loaded)
    for key in own:
      np.testing.assert_allclose(again[key], own[key], rtol=1e-5, atol=1e-5, err_msg=f'{writer} export {key}')
      np.testing.assert_allclose(loaded[key], own[key], rtol=1e-5, atol=1e-5, err_msg=f'{writer} load {key}')
    if writer != 'pre':
      assert model.class_names == ('circle', 'cross', 'ring', 'square', 'triangle')


def test_embed_and_knn_see_the_writers_features(runs, tmp_path):
  every_reader(runs)
  images, labels = prepared_test_images(runs["shapes"])
  own = saved_outputs(os.path.join(runs['ft'], 'saved_model'), images)
  ok(run_here(*runs['data'], '--dataset=image_folder', '--mode=embed', f'--checkpoint={runs["ft"]}',
              f'--model_dir={tmp_path / "embed"}', '--embed_split=test', '--embed_output=logits_sup'))
  embedded = np.load(tmp_path / 'embed' / 'embeddings.npz')
  np.testing.assert_allclose(embedded['vectors'], own['logits_sup'], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(embedded['labels'], labels.numpy())
  # kNN of the pretrained encoder against the training split, as the writer's SavedModel's features give it.
  found = ok(run_here(*runs['data'], '--dataset=image_folder', '--mode=knn', f'--checkpoint={runs["pre"]}',
                      f'--model_dir={tmp_path / "knn"}', '--knn_k=5'))
  train = inputs.make_source(Config(dataset='image_folder', data_dir=runs['shapes']), 'train')
  train_batches = list(inputs.eval_dataset(train, Config(dataset='image_folder', data_dir=runs['shapes'],
                                                          image_size=32), 64))
  train_images = tf.concat([b['image'] for b in train_batches], 0)[:40]
  train_labels = tf.concat([b['label'] for b in train_batches], 0)[:40].numpy()
  model = tf.saved_model.load(os.path.join(runs['pre'], 'saved_model'))
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  expected = knn_classify(unit(model(train_images)['final_avg_pool'].numpy()), train_labels,
                          unit(model(images)['final_avg_pool'].numpy()), labels.numpy(), k=5, temperature=0.1)
  assert found['top1'] == expected['top1'] and found['k'] == 5


def test_finetune_and_distill_start_from_what_the_writers_wrote(runs, tmp_path):
  """finetune --checkpoint (the encoder frozen: its outputs stay the writer's) and distill --teacher (the teacher's
  accuracy, measured by the distillation, is the fine-tuning run's own)."""
  every_reader(runs)
  images, _ = prepared_test_images(runs["shapes"])
  stages = 4 if runs['last_stage'] == 'block_group4' else int(runs['last_stage'][len('block'):])
  ok(run_here(*runs['data'], *DATA, '--dataset=image_folder', '--mode=finetune', f'--checkpoint={runs["pre"]}',
              f'--fine_tune_after_block={stages}', f'--model_dir={tmp_path / "frozen"}', '--train_steps=1',
              '--export_at_end=true'))
  key = runs['last_stage']
  np.testing.assert_allclose(saved_outputs(str(tmp_path / 'frozen' / 'saved_model'), images)[key],
                             saved_outputs(os.path.join(runs['pre'], 'saved_model'), images)[key], rtol=1e-5,
                             atol=1e-6)
  student = result_of(runs['student'])
  assert student['teacher_top1'] == result_of(runs['ft'])['top1']


# ---- the record is written after it is proven, and read defensively ---------------------------------------------

TINY_RUN = ['--resnet_depth=18', '--width_multiplier=0.125', '--image_size=32', '--proj_out_dim=8',
            '--dataset=image_folder'] + DATA
BEFORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'resources', 'written_before_layout_change')


@pytest.fixture(scope='module')
def one_step(tmp_path_factory, shapes_dir):
  """A pretraining of one step (with its checkpoint's own record)."""
  model_dir = tmp_path_factory.mktemp('one_step') / 'run'
  ok(run_here(*TINY_RUN, f'--data_dir={shapes_dir}', f'--model_dir={model_dir}', '--train_steps=1'))
  return model_dir


def copy_run(source, target, *leave_out):
  shutil.copytree(source, target, ignore=shutil.ignore_patterns('run.lock', *leave_out))
  return target


def test_a_failed_resume_leaves_the_record_as_it_was(one_step, tmp_path, shapes_dir):
  """config.json lost: a resume with a wrong depth is refused by the checkpoint's own record, in one line, and
  writes no config.json (which would then blame the right flags); a resume that fails on its data does not rewrite
  it either; the right command resumes and records the run again."""
  run = copy_run(one_step, tmp_path / 'run', 'saved_model')
  os.remove(run / 'config.json')
  code, message = run_here(*TINY_RUN, f'--data_dir={shapes_dir}', f'--model_dir={run}', '--train_steps=2',
                           '--resnet_depth=34')
  assert code == 2 and '--resnet_depth=34 (was 18)' in message, message
  code, message = run_here(*TINY_RUN, f'--data_dir={shapes_dir}', f'--model_dir={run}', '--train_steps=2',
                           '--learning_rate=0.9')
  assert code == 2 and '--learning_rate=0.9 (was 0.3)' in message, message  # nothing but the checkpoint knew
  assert not (run / 'config.json').exists()
  ok(run_here(*TINY_RUN, f'--data_dir={shapes_dir}', f'--model_dir={run}', '--train_steps=2'))
  recorded = json.loads((run / 'config.json').read_text())
  assert recorded['resnet_depth'] == 18 and recorded['data_dir'] == shapes_dir
  code, message = run_here(*TINY_RUN, f'--data_dir={tmp_path / "nowhere"}', f'--model_dir={run}', '--train_steps=3')
  assert code == 2 and 'nowhere' in message
  assert json.loads((run / 'config.json').read_text()) == recorded


@pytest.mark.parametrize('damage,what', [('{"mode": "pretrain", "resnet_dep', 'not valid JSON'),
                                         ('', 'is empty'), ('null', 'holds null'),
                                         ('{"mode": "pretrain", "resnet_depth": "18"}', '"resnet_depth" is "18"')])
def test_a_damaged_record_is_one_line_or_falls_back_on_the_checkpoints(one_step, tmp_path, shapes_dir, damage,
                                                                       what):
  """Cut short, emptied, null or mistyped: a model_dir whose checkpoint holds its own record resumes (and writes
  config.json again); an earlier version's checkpoint, which holds none, and a SavedModel are one line naming the
  file and what is wrong."""
  run = copy_run(one_step, tmp_path / 'run', 'saved_model')
  (run / 'config.json').write_text(damage)
  ok(run_here(*TINY_RUN, f'--data_dir={shapes_dir}', f'--model_dir={run}', '--train_steps=2'))
  assert json.loads((run / 'config.json').read_text())['resnet_depth'] == 18
  before = copy_run(BEFORE, tmp_path / 'before')
  (before / 'config.json').write_text(damage)
  (before / 'saved_model' / 'config.json').write_text(damage)
  for args in ([f'--model_dir={before}', '--train_steps=3', '--export_at_end=false'],
               ['--mode=eval', f'--checkpoint={before / "saved_model"}', f'--model_dir={tmp_path / "eval"}']):
    code, message = run_here(*DATA, '--dataset=image_folder', f'--data_dir={shapes_dir}', *args)
    assert code == 2 and what in message and 'config.json' in message and '\n' not in message, message


def test_an_earlier_versions_checkpoint_without_its_record_resumes_with_one_warning(tmp_path, shapes_dir,
                                                                                   simclr_log):
  run = copy_run(BEFORE, tmp_path / 'before')
  os.remove(run / 'config.json')
  args = ['--width_multiplier=0.0625', '--sk_ratio=0.0625', '--num_proj_layers=2', '--train_batch_size=4']
  ok(run_here(*TINY_RUN, *args, f'--data_dir={shapes_dir}', f'--model_dir={run}', '--train_steps=3'))
  warnings = [m for m in simclr_log if 'holds no record' in m]
  assert len(warnings) == 1 and 'settings of the flags' in warnings[0], warnings
  assert tf.train.latest_checkpoint(str(run)).endswith('ckpt-3')


# ---- the Python API and Keras ------------------------------------------------------------------------------------

def test_load_model_knows_what_the_command_line_knows_and_models_compose(runs, tmp_path):
  """load_model(Config(), RUN) reads the run's record as every mode does; a teacher and a student loaded side by
  side sit in one functional Keras model, which saves to .keras and reloads with the same outputs."""
  every_reader(runs)
  import keras
  teacher, _ = weights.load_model(Config(), runs['ft'])
  student, _ = weights.load_model(runs['student'])
  assert teacher.name != student.name
  images = keras.Input((32, 32, 3))
  both = keras.Model(images, [teacher(images)['logits_sup'], student(images)['logits_sup']])
  x = prepared_test_images(runs['shapes'])[0][:4]
  before = [y.numpy() for y in both(x)]
  both.save(tmp_path / 'both.keras')
  after = [y.numpy() for y in keras.models.load_model(tmp_path / 'both.keras')(x)]
  for b, a in zip(before, after):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
