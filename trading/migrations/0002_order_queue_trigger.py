from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("trading", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="order",
            name="queue_trigger",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
    ]
